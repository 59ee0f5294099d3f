"""The operator's command line, the installer and `check`: everything the
`cilium-cni` executable does without CNI_COMMAND (cli/entry.py decides).

The CNI plugin (`cni`) never imports this package: click alone costs ~30 ms.
"""
