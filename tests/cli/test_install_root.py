"""`cilium-cni install` / `uninstall` into a temporary root: what lands where,
and that uninstall leaves the tree exactly as it was (names, modes, contents,
link targets). The real paths are covered by tests/cli/test_install.py."""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest

from cli import installer as inst
from tests import lab

pytestmark = pytest.mark.e2e

BRIDGE_CONFLIST = {"cniVersion": "1.0.0", "name": "podnet", "plugins": [
    {"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local", "subnet": "10.1.0.0/24"}},
    {"type": "portmap", "capabilities": {"portMappings": True}}]}


def listing(root):
    """Every path under root with its type, mode and content hash or link target."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            if os.path.islink(path):
                out[rel] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                out[rel] = ("dir", oct(st.st_mode))
            else:
                with open(path, "rb") as f:
                    out[rel] = ("file", oct(st.st_mode), hashlib.sha256(f.read()).hexdigest())
    return out


def cli(*args):
    proc = subprocess.run([lab.PLUGIN_BIN, *args], capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if not k.startswith("CNI_")})
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture
def node(tmp_path):
    """A node tree with a prior plugin's conflist and an agent config of our own."""
    root = tmp_path / "root"
    (root / "etc/cni/net.d").mkdir(parents=True)
    (root / "etc/cni/net.d/10-podnet.conflist").write_text(json.dumps(BRIDGE_CONFLIST))
    # Runtime paths inside tmp_path: the real node's are never touched here.
    agent_yaml = tmp_path / "agent.yaml"
    agent_yaml.write_text("socket: %s/run/agent.sock\nstate-dir: %s/state\nbpf-root: "
                          "/sys/fs/bpf/%s\nlog-file: %s/agent.log\n" % (
                              tmp_path, tmp_path, lab.unique("ccni-inst-"), tmp_path))
    return root, str(agent_yaml)


@pytest.fixture
def one_folder_build(tmp_path):
    """A one-folder layout like dist/cilium-cni: the executable and its contents dir."""
    d = tmp_path / "build"
    (d / "cilium-cni.d" / "conf").mkdir(parents=True)
    shutil.copy(lab.PLUGIN_BIN, d / "cilium-cni")
    (d / "cilium-cni.d" / "conf" / "agent.yaml").write_text("log-level: info\n")
    return str(d / "cilium-cni")


def test_install_puts_everything_in_place_and_uninstall_restores_the_tree(node, one_folder_build):
    root, agent_yaml = node
    before = listing(root)
    rc, out, err = cli("install", "--root", str(root), "--chaining-mode", "generic-veth",
                       "--binary", one_folder_build, "--agent-config", agent_yaml)
    assert rc == 0, err
    binary = root / "opt/cni/bin/cilium-cni"
    assert os.access(binary, os.X_OK)
    with open(one_folder_build, "rb") as f:
        assert binary.read_bytes() == f.read()
    assert (root / "opt/cni/bin/cilium-cni.d/conf/agent.yaml").read_text() == "log-level: info\n"
    with open(agent_yaml) as f:
        assert (root / "etc/cilium-cni/agent.yaml").read_text() == f.read()
    conflist = json.loads((root / "etc/cni/net.d/10-podnet.conflist").read_text())
    assert [p["type"] for p in conflist["plugins"]] == ["bridge", "portmap", "cilium-cni"]
    ours = conflist["plugins"][-1]
    assert ours["chaining-mode"] == "generic-veth"
    assert ours["agent-socket"] == os.path.join(os.path.dirname(agent_yaml), "run/agent.sock")
    assert json.loads((root / "etc/cni/net.d/10-podnet.conflist.cilium-cni.bak").read_text()) \
        == BRIDGE_CONFLIST
    unit = (root / "etc/systemd/system/cilium-cni-agent.service").read_text()
    assert "ExecStart=%s agent --config %s" % (binary, root / "etc/cilium-cni/agent.yaml") in unit
    for line in ("Restart=on-failure", "After=network-online.target",
                 "ExecStartPre=/bin/sh -c 'mountpoint -q /sys/fs/bpf || mount -t bpf bpf "
                 "/sys/fs/bpf'", "WantedBy=multi-user.target"):
        assert line in unit.splitlines()
    wants = root / "etc/systemd/system/multi-user.target.wants/cilium-cni-agent.service"
    if shutil.which("systemctl"):  # enabled offline into the root: just the symlink
        assert os.readlink(wants) == "/etc/systemd/system/cilium-cni-agent.service"
        assert "enabled cilium-cni-agent.service offline" in out
    else:
        assert not os.path.lexists(wants)
        assert "no systemctl" in out
    assert "the agent is not running" in out

    rc, out, err = cli("uninstall", "--root", str(root))
    assert rc == 0, err
    assert "restored %s" % (root / "etc/cni/net.d/10-podnet.conflist") in out
    assert listing(root) == before


def test_install_twice_changes_nothing_and_keeps_the_first_backup(node):
    root, agent_yaml = node
    before = listing(root)
    args = ("install", "--root", str(root), "--chaining-mode", "generic-veth", "--binary",
            lab.PLUGIN_BIN, "--agent-config", agent_yaml, "--no-agent")
    assert cli(*args)[0] == 0
    once = listing(root)
    rc, out, err = cli(*args)
    assert rc == 0, err
    assert "already chained" in out
    assert listing(root) == once
    assert cli("uninstall", "--root", str(root))[0] == 0
    assert listing(root) == before


def test_existing_agent_config_and_a_single_conf_file(node):
    root, agent_yaml = node
    os.unlink(root / "etc/cni/net.d/10-podnet.conflist")
    single = {"cniVersion": "1.0.0", "name": "podnet", "type": "ptp",
              "ipam": {"type": "host-local", "subnet": "10.2.0.0/24"}}
    (root / "etc/cni/net.d/10-podnet.conf").write_text(json.dumps(single))
    (root / "etc/cilium-cni").mkdir()
    (root / "etc/cilium-cni/agent.yaml").write_text("log-level: debug\n")  # the operator's
    before = listing(root)
    rc, out, err = cli("install", "--root", str(root), "--chaining-mode", "generic-veth",
                       "--binary", lab.PLUGIN_BIN, "--unit-dir", str(root / "units"))
    assert rc == 0, err
    assert "kept the existing agent config" in out
    assert "not enabled (unit dir outside the install root)" in out  # --unit-dir given
    assert (root / "etc/cilium-cni/agent.yaml").read_text() == "log-level: debug\n"
    assert not (root / "etc/cni/net.d/10-podnet.conf").exists()
    made = json.loads((root / "etc/cni/net.d/10-podnet.conflist").read_text())
    assert [p["type"] for p in made["plugins"]] == ["ptp", "cilium-cni"]
    assert (root / "units/cilium-cni-agent.service").exists()
    assert cli("uninstall", "--root", str(root), "--unit-dir", str(root / "units"))[0] == 0
    assert listing(root) == before


def test_bad_input_names_what_is_wrong_and_changes_nothing(node, tmp_path):
    root, agent_yaml = node
    before = listing(root)
    base = ("install", "--root", str(root), "--binary", lab.PLUGIN_BIN)
    rc, _, err = cli(*base, "--chaining-mode", "no-such-mode")
    assert rc != 0 and "unknown chaining mode 'no-such-mode'" in err
    rc, _, err = cli(*base, "--chaining-mode", "generic-veth", "--target", "nonet")
    assert rc != 0 and "no network 'nonet'" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("queue-size: many\n")
    rc, _, err = cli(*base, "--chaining-mode", "generic-veth", "--agent-config", str(bad))
    assert rc != 0 and "%s: key 'queue-size' must be a" % bad in err and "integer" in err
    rc, _, err = cli("install", "--root", str(root), "--chaining-mode", "generic-veth",
                     "--binary", str(tmp_path / "missing"))
    assert rc != 0 and "missing" in err and "Traceback" not in err
    rc, _, err = cli("uninstall", "--root", str(root))
    assert rc != 0 and "nothing to uninstall: no install record at %s" % (
        root / "etc/cilium-cni/install.json") in err
    assert listing(root) == before


def test_layout_paths_derive_from_the_root_unless_given():
    lay = inst.Layout.under("/host", conf_dir="/elsewhere/net.d")
    assert (lay.binary, lay.contents, lay.conf_dir, lay.agent_config, lay.unit, lay.manifest) == (
        "/host/opt/cni/bin/cilium-cni", "/host/opt/cni/bin/cilium-cni.d", "/elsewhere/net.d",
        "/host/etc/cilium-cni/agent.yaml", "/host/etc/systemd/system/cilium-cni-agent.service",
        "/host/etc/cilium-cni/install.json")


def test_a_failure_part_way_is_recorded_and_uninstall_undoes_it(node, tmp_path):
    """An agent that dies at start (--start): install fails, says why, and the
    record of what it had already done lets uninstall restore the tree."""
    root, agent_yaml = node
    broken = tmp_path / "broken-cilium-cni"
    broken.write_text("#!/bin/sh\nexit 3\n")
    broken.chmod(0o755)
    before = listing(root)
    rc, out, err = cli("install", "--root", str(root), "--chaining-mode", "generic-veth",
                       "--binary", str(broken), "--agent-config", agent_yaml, "--start")
    assert rc != 0 and "the agent exited with status 3 at start" in err, (out, err)
    assert (root / "opt/cni/bin/cilium-cni").exists()
    assert (root / "etc/cilium-cni/install.json").exists()
    rc, out, err = cli("uninstall", "--root", str(root))
    assert rc == 0, err
    assert listing(root) == before


def test_the_one_folder_build_installs_its_launcher(tmp_path, monkeypatch):
    """Frozen, this process is the PyInstaller executable in cilium-cni.d; the
    default binary to install is the launcher beside that folder."""
    contents = tmp_path / "cilium-cni.d"
    contents.mkdir()
    inner = contents / "cilium-cni"
    inner.write_text("")
    inner.chmod(0o755)
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "executable", str(inner))
    assert inst.running_binary() is None  # no launcher beside the folder: nothing to install
    outer = tmp_path / "cilium-cni"
    outer.write_text("")
    outer.chmod(0o755)
    assert inst.running_binary() == str(outer)
