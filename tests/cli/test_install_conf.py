"""install-conf: atomic, backed up, idempotent, refuses what it cannot parse."""

import json
import os
import subprocess

import pytest

from cli.install_conf import BACKUP_SUFFIX, InstallError, install
from tests.lab import PLUGIN_BIN

pytestmark = pytest.mark.unit

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


EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "conf", "examples")


def examples():
    for name in sorted(os.listdir(EXAMPLES)):
        with open(os.path.join(EXAMPLES, name)) as f:
            yield name, json.load(f)


@pytest.mark.parametrize("name, conflist", list(examples()), ids=[n for n, _ in examples()])
def test_install_conf_rebuilds_each_shipped_example_from_the_prior_plugins_conflist(
        tmp_path, name, conflist):
    """Each mode's example is what install-conf makes of that plugin's own conflist."""
    ours = next(p for p in conflist["plugins"] if p["type"] == "cilium-cni")
    prior = dict(conflist, plugins=[p for p in conflist["plugins"] if p is not ours])
    write(tmp_path / name, prior)
    install(str(tmp_path), ours)
    plugins = json.loads((tmp_path / name).read_text())["plugins"]
    assert [p["type"] for p in plugins] == [p["type"] for p in prior["plugins"]] + ["cilium-cni"]
    assert plugins[-1] == ours
    if conflist["plugins"][-1] is ours:
        assert plugins == conflist["plugins"]


def test_every_mode_has_an_example():
    import chainers
    modes = {next(p for p in c["plugins"] if p["type"] == "cilium-cni")["chaining-mode"]
             for _, c in examples()}
    aliases = {"aws-cni": "aws-vpc"}
    assert {aliases.get(m, m) for m in modes} | {"aws-cni"} >= set(chainers.api.names())


@pytest.mark.parametrize("mode, plugins, words", [
    ("calico", [{"type": "bridge"}], ["calico", "bridge"]),
    ("aws-vpc", [{"type": "weave-net"}], ["aws-cni", "weave-net"]),
    ("portmap", [{"type": "bridge"}], ["portmap plugin"]),
])
def test_a_mode_that_does_not_fit_the_conflist_is_refused(tmp_path, mode, plugins, words):
    f = write(tmp_path / "10-net.conflist", {"cniVersion": "1.0.0", "name": "n", "plugins": plugins})
    before = f.read_text()
    with pytest.raises(InstallError) as err:
        install(str(tmp_path), dict(ENTRY, **{"chaining-mode": mode}))
    for w in words:
        assert w in str(err.value)
    assert "generic-veth" in str(err.value)
    assert f.read_text() == before and not os.path.exists(str(f) + BACKUP_SUFFIX)
