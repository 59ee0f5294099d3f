"""install-conf: atomic, backed up, idempotent, refuses what it cannot parse."""

import json
import os
import subprocess

import pytest

from cni.install_conf import BACKUP_SUFFIX, InstallError, install
from tests.lab import PLUGIN_BIN

BRIDGE = {"cniVersion": "1.0.0", "name": "k8s-pod-network",
          "plugins": [{"type": "bridge", "bridge": "cni0"}, {"type": "portmap"}]}
ENTRY = {"type": "cilium-cni", "chaining-mode": "generic-veth"}


def write(path, data):
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def test_appends_keeps_backup_and_is_idempotent(tmp_path):
    f = write(tmp_path / "10-net.conflist", BRIDGE)
    original = f.read_text()
    path, backup, changed = install(str(tmp_path), ENTRY)
    assert changed and path == str(f) and backup == str(f) + BACKUP_SUFFIX
    assert open(backup).read() == original
    plugins = json.loads(f.read_text())["plugins"]
    assert [p["type"] for p in plugins] == ["bridge", "portmap", "cilium-cni"]
    before = f.read_text()
    assert install(str(tmp_path), ENTRY)[2] is False
    assert f.read_text() == before
    # new settings update our entry in place; the backup stays the original
    install(str(tmp_path), dict(ENTRY, **{"agent-socket": "/run/x.sock"}))
    plugins = json.loads(f.read_text())["plugins"]
    assert plugins[-1]["agent-socket"] == "/run/x.sock" and len(plugins) == 3
    assert open(backup).read() == original


def test_single_plugin_conf_becomes_a_conflist(tmp_path):
    write(tmp_path / "10-flannel.conf", {"cniVersion": "0.3.1", "name": "cbr0", "type": "bridge"})
    path, backup, _ = install(str(tmp_path), ENTRY)
    assert path == str(tmp_path / "10-flannel.conflist")
    assert not os.path.exists(tmp_path / "10-flannel.conf")
    assert os.path.exists(backup)
    data = json.loads(open(path).read())
    assert data["name"] == "cbr0" and data["cniVersion"] == "0.3.1"
    assert [p["type"] for p in data["plugins"]] == ["bridge", "cilium-cni"]


def test_refuses_unparseable_file_and_touches_nothing(tmp_path):
    f = write(tmp_path / "10-net.conflist", "{not json")
    with pytest.raises(InstallError, match="does not parse"):
        install(str(tmp_path), ENTRY)
    assert f.read_text() == "{not json"
    assert os.listdir(tmp_path) == ["10-net.conflist"]


def test_target_selects_among_networks(tmp_path):
    write(tmp_path / "10-a.conflist", BRIDGE)
    write(tmp_path / "20-b.conflist", dict(BRIDGE, name="other"))
    with pytest.raises(InstallError, match="--target"):
        install(str(tmp_path), ENTRY)
    with pytest.raises(InstallError, match="no network 'nope'"):
        install(str(tmp_path), ENTRY, "nope")
    path, _, _ = install(str(tmp_path), ENTRY, "other")
    assert path.endswith("20-b.conflist")
    assert "cilium-cni" not in (tmp_path / "10-a.conflist").read_text()


def test_cli_install_conf(tmp_path):
    write(tmp_path / "10-net.conflist", BRIDGE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    run = [PLUGIN_BIN, "install-conf", "--conf-dir", str(tmp_path), "--chaining-mode"]
    ok = subprocess.run(run + ["generic-veth"], capture_output=True, text=True, env=env)
    assert ok.returncode == 0 and "added" in ok.stdout
    again = subprocess.run(run + ["generic-veth"], capture_output=True, text=True, env=env)
    assert again.returncode == 0 and "nothing changed" in again.stdout
    bad = subprocess.run(run + ["bogus"], capture_output=True, text=True, env=env)
    assert bad.returncode != 0 and "generic-veth" in bad.stderr and "Traceback" not in bad.stderr
