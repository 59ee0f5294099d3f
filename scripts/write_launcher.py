"""Write the fast `cilium-cni` launcher over pip's console script.

pip's generated script runs the interpreter with site processing and
imports `re` before our code: ~8 ms of the ~20 ms a plugin call costs
(docs/benchmarks.md). This launcher starts Python isolated and without
site (-IS), puts the package on sys.path itself, and leaves site-packages
to the CLI branch (cli.entry), which loads them on demand. Like the built
binary's launcher (scripts/launcher.c), it runs the plugin (cni.entry)
itself when CNI_COMMAND is set (even empty: the plugin answers that with
code 4), so the plugin's path loads no module of `cli`.
"""

import os
import sys

import cni

TEMPLATE = """#!{python} -IS
# cilium-cni fast launcher, written by scripts/setup (scripts/write_launcher.py).
import sys
sys.path.insert(0, {root!r})
import os
if "CNI_COMMAND" in os.environ:
    from cni.entry import plugin
    plugin()
from cli.entry import main
sys.exit(main())
"""


def main(target):
    root = os.path.dirname(os.path.dirname(os.path.abspath(cni.__file__)))
    python = os.path.join(os.path.dirname(os.path.abspath(target)), "python")
    text = TEMPLATE.format(python=python, root=root)
    tmp = target + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o755)
    os.replace(tmp, target)


if __name__ == "__main__":
    main(sys.argv[1])
