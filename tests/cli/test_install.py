"""`cilium-cni install` then `uninstall` on this machine's real paths.

Installs into /opt/cni/bin, /etc/cilium-cni, /etc/systemd/system and the
node's conflist, starts the agent (without systemd here: --start), wires a
pod through the installed conflist, then uninstalls with the pod still
running, and compares listings taken before and after: files (names, modes,
contents, link targets) under the install dirs, pins under /sys/fs/bpf,
links, tc filters on every link, iptables rules, and the agent's runtime
paths. With CILIUM_CNI_BIN pointing at the built binary, that is what gets
installed and run.
"""

import hashlib
import json
import os
import re
import time

import pytest

from tests import lab

pytestmark = pytest.mark.e2e

DIRS = ("/opt/cni/bin", "/etc/cni/net.d", "/etc/cilium-cni", "/etc/systemd/system")
RUNTIME = ("/var/lib/cilium-cni", "/var/run/cilium-cni", "/var/log/cilium-cni-agent.log",
           "/var/log/cilium-cni.log", "/sys/fs/bpf/cilium-cni")
BIN = "/opt/cni/bin/cilium-cni"


# Names that other tests make and remove while this one runs (tests of other
# parts run at the same time on a shared machine): their agents' bpf roots,
# their bridges (lab.unique "cc..." names) and pod veths. This test's own
# bridge and veth are checked by name instead, and its programs by id.
OTHERS = re.compile(r"^/sys/fs/bpf/cilium-cni-(test|bench)-|^cc|^veth")


def tree(root):
    out = {}
    if not os.path.lexists(root):
        return None
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            if OTHERS.match(path):
                continue
            st = os.lstat(path)
            if os.path.islink(path):
                out[path] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                out[path] = ("dir", oct(st.st_mode))
            elif root == "/sys/fs/bpf":
                out[path] = ("pin", oct(st.st_mode))
            else:
                with open(path, "rb") as f:
                    out[path] = ("file", oct(st.st_mode), hashlib.sha256(f.read()).hexdigest())
    return out


def links():
    return sorted(ln["ifname"] for ln in json.loads(lab.sh("ip", "-j", "link", "show").stdout))


def filters():
    out = {}
    for name in links():
        if OTHERS.match(name):
            continue
        for hook in ("ingress", "egress"):
            text = lab.sh("tc", "filter", "show", "dev", name, hook, check=False).stdout
            out[(name, hook)] = re.sub(r" tag [0-9a-f]+", "", text)
    return out


def iptables():
    rules = []
    for tool in ("iptables-save", "ip6tables-save"):
        text = lab.sh(tool, check=False).stdout
        rules += [re.sub(r"\[\d+:\d+\]", "", ln) for ln in text.splitlines()
                  if not ln.startswith("#")]
    return rules


def snapshot():
    return {"files": {d: tree(d) for d in DIRS}, "pins": tree("/sys/fs/bpf"),
            "links": [n for n in links() if not OTHERS.match(n)],
            "filters": filters(), "iptables": iptables(),
            "runtime": {p: os.path.lexists(p) for p in RUNTIME}}


def cli(*args, binary=BIN):
    return lab.sh(binary, *args, check=False, timeout=180,
                  env={k: v for k, v in os.environ.items() if not k.startswith("CNI_")})


def our_filters(ifname):
    return [ln for hook in ("ingress", "egress")
            for ln in lab.sh("tc", "filter", "show", "dev", ifname, hook, check=False)
            .stdout.splitlines() if "cilium-cni/" in ln]


@pytest.fixture
def node_network(tmp_path, require_root):
    """A prior plugin's conflist on the real conf dir, as a node would have."""
    for path in ("/etc/cilium-cni/install.json", "/sys/fs/bpf/cilium-cni",
                 "/var/run/cilium-cni/agent.sock", BIN):
        if os.path.lexists(path):
            pytest.fail("%s exists: cilium-cni is already installed on this machine; "
                        "run '%s uninstall' first" % (path, BIN))
    name = lab.unique("ccnet-inst-")
    bridge = lab.unique("ccbi")
    conflist = {"cniVersion": "1.0.0", "name": name, "plugins": [
        {"type": "bridge", "bridge": bridge, "isGateway": True, "ipMasq": False,
         "ipam": {"type": "host-local", "subnet": "10.213.251.0/24",
                  "dataDir": str(tmp_path / "ipam")}}]}
    os.makedirs("/etc/cni/net.d", exist_ok=True)
    path = "/etc/cni/net.d/05-%s.conflist" % name
    with open(path, "w") as f:
        json.dump(conflist, f)
    yield name, path, bridge
    # Whatever happened above: take cilium-cni off again, then our network.
    if os.path.exists("/etc/cilium-cni/install.json") and os.path.exists(BIN):
        cli("uninstall")
    for p in (path, path + ".cilium-cni.bak"):
        if os.path.exists(p):
            os.unlink(p)
    lab.sh("ip", "link", "del", bridge, check=False)


def test_install_run_a_pod_uninstall_leaves_nothing_behind(node_network, pods):
    name, conf_path, bridge = node_network
    before = snapshot()

    proc = cli("install", "--chaining-mode", "generic-veth", "--target", name,
               "--binary", lab.PLUGIN_BIN, "--start", binary=lab.PLUGIN_BIN)
    assert proc.returncode == 0, proc.stderr
    assert "started the agent without systemd" in proc.stdout or \
        "enabled and started cilium-cni-agent.service" in proc.stdout
    status = cli("status", "-o", "json")
    assert status.returncode == 0, status.stderr
    with open(conf_path) as f:
        installed = json.load(f)
    assert [p["type"] for p in installed["plugins"]] == ["bridge", "cilium-cni"]

    pod = pods()
    chain = lab.Chain(installed, "/opt/cni/bin:%s" % lab.REFERENCE_PLUGINS,
                      max_version=lab.REFERENCE_MAX_VERSION)
    chain.add("ctr-inst", pod.path)
    eps = json.loads(cli("endpoint", "list", "-o", "json").stdout)
    (ep,) = [e for e in eps if e["key"].startswith("ctr-inst:")]
    veth = ep["host"]["ifname"]
    assert len(our_filters(veth)) == 2  # from_container on ingress, to_container on egress
    from datapath.cleanup import pinned_prog_ids
    prog_ids = pinned_prog_ids("/sys/fs/bpf/cilium-cni")
    # endpoint programs, and socket load-balancing's on the cgroup when enabled
    assert len(prog_ids) >= 2 and all(lab.prog_exists(i) for i in prog_ids)

    proc = cli("uninstall", binary=BIN)
    assert proc.returncode == 0, proc.stderr
    assert "stopped the agent (pid" in proc.stdout or "stopped and disabled" in proc.stdout
    assert "detached 2 tc filter(s)" in proc.stdout
    assert our_filters(veth) == []  # the pod still runs; our programs are off its veth

    # The pod goes away through the restored conflist (bridge alone).
    with open(conf_path) as f:
        restored = json.load(f)
    assert [p["type"] for p in restored["plugins"]] == ["bridge"]
    lab.Chain(restored, lab.REFERENCE_PLUGINS).delete("ctr-inst", pod.path, use_cache=False)
    pod.remove()
    lab.sh("ip", "link", "del", bridge, check=False)
    os.unlink(conf_path)
    deadline = time.monotonic() + 10
    while veth in links() and time.monotonic() < deadline:
        time.sleep(0.1)

    assert veth not in links() and bridge not in links()
    # Freed by the kernel: no filter, cgroup hook, pin or process holds our
    # programs any more.
    assert lab.still_loaded(prog_ids) == []
    after = snapshot()
    before["files"]["/etc/cni/net.d"].pop(conf_path)  # the test's own network, removed above
    for key in before:
        assert after[key] == before[key], key
