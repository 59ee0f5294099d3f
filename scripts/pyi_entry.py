"""Entry script of the PyInstaller build (scripts/cilium-cni.spec)."""

import sys

from cli.entry import main

sys.exit(main())
