"""The cluster demo (`scripts/demo --nodes 3`) shows what it says and leaves nothing."""

import os
import re
import subprocess
import sys

import pytest

from tests import lab

pytestmark = pytest.mark.e2e


def test_cluster_demo(require_root):
    proc = subprocess.run([sys.executable, os.path.join(lab.REPO, "scripts", "demo.py"),
                           "--nodes", "3"], capture_output=True, text=True, timeout=300)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert re.search(r"^client\s+\(\S+-n2\) -> web \(\S+-n0\) TCP 8080: answered$", out, re.M), out
    assert re.search(r"^intruder \(\S+-n2\) -> web \(\S+-n0\) TCP 8080: dropped$", out, re.M), out
    assert re.search(r"^intruder \(\S+-n2\) -> web \(\S+-n0\) TCP 8080: answered$", out, re.M), out
    assert re.search(r"^client \(\S+\) -> 10\.96\.77\.1:80: answered$", out, re.M), out
    assert "host processes of every node -> 10.96.77.1:80: ok, ok, ok" in out
    revisions = re.findall(r"^\S+-n\d: policy revision (\d+)", out, re.M)
    assert len(revisions) == 3 and len(set(revisions)) == 1, revisions
    assert out.rstrip().endswith("== left behind: nothing"), out[-500:]
