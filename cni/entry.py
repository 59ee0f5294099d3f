"""The one executable: a CNI plugin when CNI_COMMAND is set, else the CLI.

The plugin branch imports only the standard library; the command line
(click, pyroute2, bcc) is imported only when no CNI_COMMAND is set.
"""

import os
import sys


def main():
    if os.environ.get("CNI_COMMAND"):
        from cni.plugin import main as plugin_main
        return plugin_main(os.environ, sys.stdin, sys.stdout)
    if sys.flags.no_site:
        # The fast launcher starts Python with -S for the plugin's sake; the
        # CLI needs the venv's site-packages (click, pyroute2) and bcc.
        import site
        site.main()
    from cni.cli import cli
    return cli(prog_name="cilium-cni")
