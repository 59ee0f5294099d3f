"""The one executable: the CNI plugin when CNI_COMMAND is set, else the CLI.

The plugin branch (`cni.entry.plugin`) imports only the standard library;
the command line (click, pyroute2, bcc) is imported only when no
CNI_COMMAND is set. This module sits above both packages: `cni` never
imports `cli`.

In the PyInstaller build (scripts/build) bcc is not bundled: its Python
module must match the node's libbcc (and libbcc needs the node's LLVM and
kernel headers anyway), so the CLI branch takes both from the node's
python3-bpfcc package (docs/operations.md).
"""

import os
import sys


def main():
    # Set at all, even empty or unknown, means a runtime is calling: it gets
    # a CNI error object (code 4), not the usage text.
    if "CNI_COMMAND" in os.environ:
        from cni.entry import plugin
        plugin()
    if getattr(sys, "frozen", False):
        _use_node_bcc()
    elif sys.flags.no_site:
        # The fast launcher starts Python with -S for the plugin's sake; the
        # CLI needs the venv's site-packages (click, pyroute2) and bcc.
        import site
        site.main()
    from cli.main import cli
    return cli(prog_name="cilium-cni")


# Where Debian and Ubuntu (python3-bpfcc) and Fedora (python3-bcc) put bcc.
NODE_BCC_DIRS = ("/usr/lib/python3/dist-packages", "/usr/lib/python3.11/site-packages",
                 "/usr/lib/python3/site-packages")


def _use_node_bcc():
    """Make the node's bcc importable; bundled modules still win (appended)."""
    extra = os.environ.get("CILIUM_CNI_BCC_PATH")
    for d in ((extra,) if extra else ()) + NODE_BCC_DIRS:
        if os.path.isfile(os.path.join(d, "bcc", "__init__.py")):
            if d not in sys.path:
                sys.path.append(d)
            return
