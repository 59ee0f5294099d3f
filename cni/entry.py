"""The one executable: a CNI plugin when CNI_COMMAND is set, else the CLI.

The plugin branch imports only the standard library; the command line
(click, pyroute2, bcc) is imported only when no CNI_COMMAND is set.

In the PyInstaller build (scripts/build) bcc is not bundled: its Python
module must match the node's libbcc (and libbcc needs the node's LLVM and
kernel headers anyway), so the CLI branch takes both from the node's
python3-bpfcc package (docs/operations.md).
"""

import os
import sys


def main():
    if os.environ.get("CNI_COMMAND"):
        plugin()
    if getattr(sys, "frozen", False):
        _use_node_bcc()
    elif sys.flags.no_site:
        # The fast launcher starts Python with -S for the plugin's sake; the
        # CLI needs the venv's site-packages (click, pyroute2) and bcc.
        import site
        site.main()
    from cni.cli import cli
    return cli(prog_name="cilium-cni")


def plugin():
    """The CNI plugin call: answer the runtime, then end the process.

    Also the entry of the built binary's launcher (scripts/launcher.c), which
    runs it when CNI_COMMAND is set.
    """
    from cni.plugin import main as plugin_main
    _exit_now(plugin_main(os.environ, sys.stdin, sys.stdout))


def _exit_now(rc):
    """End a plugin call without the interpreter's teardown.

    Freeing every module and object at exit costs ~2 ms (1.8 ms with the
    source launcher, 2.4 ms frozen, measured with strace and start-up loops;
    docs/benchmarks.md), paid by every pod operation for nothing: the
    kernel reclaims the memory anyway. The plugin writes its log with
    os.write and registers no atexit handlers, so stdout and stderr are the
    only buffers left; if stdout cannot be flushed the runtime got no
    answer, so the exit code cannot be 0.
    """
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        rc = rc or 1
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os._exit(rc)


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
