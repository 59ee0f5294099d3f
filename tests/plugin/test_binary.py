"""The self-contained binary (scripts/cilium-cni.spec, as scripts/build makes
it) runs the chained end-to-end suite: the plugin, the agent (bcc compiling
the bundled C sources, bcc itself from the node) and the CLI all from the
frozen executable: the launcher runs the plugin with its linked-in
interpreter and hands the CLI and agent to the PyInstaller executable. The
whole e2e suite runs against a built binary with
CILIUM_CNI_BIN=dist/cilium-cni/cilium-cni (docs/operations.md); this keeps
the chained part of it in every test run."""

import os
import subprocess
import sys

import pytest

from tests import lab

pytestmark = pytest.mark.e2e

SPEC = os.path.join(lab.REPO, "scripts", "cilium-cni.spec")


def test_built_binary_passes_the_chained_e2e_suite(tmp_path, require_root):
    build = subprocess.run(
        [sys.executable, "-m", "PyInstaller", "--noconfirm", "--log-level", "WARN",
         "--workpath", str(tmp_path / "work"), "--distpath", str(tmp_path / "dist"), SPEC],
        capture_output=True, text=True, timeout=900, cwd=lab.REPO)
    assert build.returncode == 0, build.stderr[-3000:]
    binary = tmp_path / "dist" / "cilium-cni" / "cilium-cni"
    contents = tmp_path / "dist" / "cilium-cni" / "cilium-cni.d"
    assert (contents / "datapath" / "bpf" / "endpoint.c").is_file()
    assert (contents / "agent" / "api" / "openapi.yaml").is_file()  # the agent routes by it
    assert not (contents / "bcc").exists()  # taken from the node, not bundled
    assert os.access(contents / "cilium-cni", os.X_OK)  # the PyInstaller executable
    # The launcher has the interpreter linked in, and finds the bundled
    # libraries by its RPATH, not by LD_LIBRARY_PATH.
    dynamic = subprocess.run(["readelf", "-d", str(binary)], capture_output=True, text=True,
                             check=True).stdout
    assert "libpython" not in dynamic
    assert "Library rpath: [$ORIGIN/cilium-cni.d]" in dynamic

    rc, out, err = lab.run_plugin(str(binary), "VERSION", {"cniVersion": "1.0.0"})
    assert rc == 0 and "1.0.0" in out["supportedVersions"], err
    # CNI_COMMAND set but empty is the plugin's to answer (code 4), not the CLI's usage
    rc, out, err = lab.run_plugin(str(binary), "", {"cniVersion": "1.0.0"})
    assert rc == 1 and out["code"] == 4 and out["cniVersion"] == "1.0.0", err
    version = subprocess.run([str(binary), "version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("cilium-cni "), version.stderr

    env = dict(os.environ, CILIUM_CNI_BIN=str(binary))
    suite = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         os.path.join(lab.REPO, "tests", "chaining", "test_chain.py")],
        capture_output=True, text=True, timeout=1800, cwd=lab.REPO, env=env)
    summary = suite.stdout.strip().splitlines()[-1] if suite.stdout.strip() else ""
    assert suite.returncode == 0, suite.stdout[-5000:] + suite.stderr[-2000:]
    assert " passed" in summary and "failed" not in summary and "error" not in summary, summary
