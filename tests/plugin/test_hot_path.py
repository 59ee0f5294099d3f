"""The plugin's ADD/DEL/CHECK path imports only cheap standard-library modules.

Measured per import on this kind of machine: json (with re, enum,
collections) ~7 ms, socket ~2 ms, logging ~5 ms, dataclasses ~7 ms,
typing ~5 ms, http.client ~25 ms, pyroute2 ~220 ms. The runtime pays them
for every pod, so the real plugin code path runs here in a fresh
interpreter started like the launcher (-I -S) and its modules are listed.
"""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HEAVY = ("json", "re", "enum", "collections", "functools", "socket", "ipaddress", "logging",
         "dataclasses", "typing", "http", "http.client", "pyroute2", "bcc", "click",
         "jsonschema", "yaml", "sqlite3", "threading", "copy")

SCRIPT = """
import io, sys
sys.path.insert(0, %(root)r)
from cni.plugin import main
netconf = %(netconf)r
for command in ("ADD", "CHECK", "DEL"):
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "c1", "CNI_NETNS": "/var/run/netns/x",
           "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni"}
    out = io.StringIO()
    rc = main(env, io.StringIO(netconf), out)
    print(command, rc, out.getvalue())
print("LOADED", " ".join(m for m in %(heavy)r if m in sys.modules))
"""


def test_plugin_path_imports_nothing_heavy(tmp_path):
    netconf = json.dumps({
        "cniVersion": "1.0.0", "name": "n", "type": "cilium-cni",
        "chaining-mode": "generic-veth", "agent-socket": str(tmp_path / "agent.sock"),
        "log-file": str(tmp_path / "plugin.log"),
        "prevResult": {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0"}],
                       "ips": [{"address": "10.0.0.2/24", "interface": 0}]}})
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c",
         SCRIPT % {"root": ROOT, "netconf": netconf, "heavy": HEAVY}],
        capture_output=True, text=True, check=True)
    lines = proc.stdout.splitlines()
    # ADD and CHECK reach for the (absent) agent: code 11; DEL records the deletion.
    assert lines[0].startswith("ADD 1 ") and '"code": 11' in lines[0]
    assert lines[1].startswith("CHECK 1 ") and '"code": 11' in lines[1]
    assert lines[2].strip() == "DEL 0"
    assert (tmp_path / "pending-deletes" / "c1:eth0.json").exists()
    assert lines[3].strip() == "LOADED", "heavy modules on the plugin path: %s" % lines[3]
