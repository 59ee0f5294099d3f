"""The multi-node lab itself: pods on different nodes talk through the
cilium-cni datapath over native routing, a node-local policy still
enforces, the etcd cluster keeps and loses quorum as members die, node
processes run in their node's netns and cgroup, and the lab leaves nothing
behind, also when it fails to start. The agents are standalone (no kvstore):
to a node, a pod of another node is `world`."""

import json
import os
import subprocess
import time

import pytest

from scripts import clusterlab
from tests import lab
from tests.policy.test_pods import cidr_policy, import_policy  # b is app=web

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def pods(cluster):
    n0, n1, n2 = cluster.nodes
    made = {"a1": n0.add_pod("a1", labels={"app": "a1"}),
            "a2": n0.add_pod("a2", labels={"app": "a2"}),
            "b": n1.add_pod("b", labels={"app": "web"}),
            "friend": n1.add_pod("friend", labels={"app": "friend"}),
            "c": n2.add_pod("c", labels={"app": "c"})}
    servers = [lab.EchoServer(made[p].netns, proto, 8080) for p in ("b", "c")
               for proto in ("tcp", "udp")]
    yield made
    for s in servers:
        s.stop()


def talks(pods, src, dst, proto="tcp"):
    return lab.talks(pods[src].netns, proto, pods[dst].ip, 8080)


def test_pods_reach_pods_on_other_nodes(cluster, pods):
    for node, names in zip(cluster.nodes, (("a1", "a2"), ("b", "friend"), ("c",)), strict=True):
        veths = {a.split("/")[0]: e["host"]["ifname"] for e in node.agent.endpoints()
                 for a in e["interface"]["addresses"]}
        for n in names:
            # the node's agent has the pod, and its host veth carries the agent's
            # programs: the pod's packets cross the datapath
            shown = node.run("tc", "filter", "show", "dev", veths[pods[n].ip], "ingress").stdout
            assert "bpf" in shown and "direct-action" in shown, shown
    for proto in ("tcp", "udp"):
        assert talks(pods, "a1", "b", proto)
        assert talks(pods, "a1", "c", proto)
        assert talks(pods, "a2", "c", proto)


def test_node_local_policy_denies_and_allows(cluster, pods, tmp_path):
    n1 = cluster.nodes[1]
    try:
        # fromCIDR: a pod of another node by its address
        import_policy(n1.agent, tmp_path, cidr_policy("ingress", "fromCIDR: [%s/32]"
                                                      % pods["a1"].ip))
        for proto in ("tcp", "udp"):
            assert talks(pods, "a1", "b", proto)
            assert not talks(pods, "a2", "b", proto)
        assert not talks(pods, "friend", "b")
        # labels: a pod of the same node; pods of other nodes are world to a standalone agent
        import_policy(n1.agent, tmp_path, cidr_policy(
            "ingress", "fromEndpoints: [{matchLabels: {app: friend}}]"))
        assert talks(pods, "friend", "b")
        assert not talks(pods, "a1", "b")
        assert not talks(pods, "c", "b", "udp")
        # the other nodes hold no rule of it
        assert talks(pods, "a1", "c")
    finally:
        n1.cli("policy", "delete", "--all")
    assert talks(pods, "a2", "b") and talks(pods, "friend", "b")


def test_node_processes_run_in_their_netns_and_cgroup(cluster):
    node = cluster.nodes[2]
    assert "0::/%s\n" % node.name in node.run("cat", "/proc/self/cgroup").stdout
    addrs = json.loads(node.run("ip", "-j", "-4", "addr", "show", "dev", "lan0").stdout)
    assert addrs[0]["addr_info"][0]["local"] == node.address
    # bpffs and the cgroup hierarchy stay visible under nsenter (not under `ip netns exec`)
    assert node.run("test", "-d", node.bpf_root, check=False).returncode == 0
    # the agent's socket hooks sit on the node's cgroup, not on the machine's root
    hooks = json.loads(lab.sh("bpftool", "-j", "cgroup", "show", node.cgroup).stdout)
    assert {"cgroup_inet4_connect", "cgroup_udp4_sendmsg"} <= {h["attach_type"] for h in hooks}
    # the agent enters the netns the same way: its pid's netns is the node's
    agent_ns = node.run("readlink", "/proc/%d/ns/net" % node.agent.proc.pid).stdout
    assert agent_ns == node.run("readlink", "/proc/self/ns/net").stdout
    # the node's processes reach another node and the etcd members over the LAN
    assert node.run("ping", "-c1", "-W2", cluster.nodes[0].address, check=False).returncode == 0


def test_etcd_keeps_and_loses_quorum(cluster):
    etcd = cluster.etcd
    etcd.put("ccl/one", "1", member=0)
    assert etcd.get_prefix("ccl/", member=2) == {"ccl/one": "1"}
    leader = etcd.leader()
    follower = (leader + 1) % 3
    try:
        etcd.kill(leader)  # the hardest one: a new election
        # two of three are a quorum: writes go on once they elected a leader
        # (a write sent during the election hangs to its timeout: short tries)
        _eventually(lambda: etcd.put("ccl/two", "2", member=follower, timeout=1), 8)
        assert etcd.get_prefix("ccl/", member=follower) == {"ccl/one": "1", "ccl/two": "2"}
        etcd.kill(follower)
        with pytest.raises(subprocess.CalledProcessError):
            etcd.put("ccl/three", "3", timeout=1.5)
    finally:
        etcd.start()
        etcd.wait_healthy()
    etcd.put("ccl/four", "4", member=leader)
    got = etcd.get_prefix("ccl/", member=follower)
    # a write that timed out without a quorum is not a failed one: the
    # survivor kept the proposal and may commit it once the quorum is back
    assert got.pop("ccl/three", "3") == "3"
    assert got == {"ccl/one": "1", "ccl/two": "2", "ccl/four": "4"}
    etcd.delete_prefix("ccl/")
    assert etcd.get_prefix("ccl/") == {}


def _eventually(call, seconds):
    deadline = time.monotonic() + seconds
    while True:
        try:
            return call()
        except subprocess.CalledProcessError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_lab_leaves_nothing_behind(require_root):
    with clusterlab.Cluster(nodes=2, etcd=True) as c:
        c.nodes[0].add_pod("p")
        sleeper = c.nodes[1].run_bg("sleep", "600")
        etcd_pids = c.etcd.pids()
        cgroups = [n.cgroup for n in c.nodes]
        assert clusterlab.leftovers(c.prefix)  # it does see what is there
    assert clusterlab.leftovers(c.prefix) == []
    assert sleeper.poll() is not None
    for path in cgroups:
        assert not os.path.exists(path)
    running = lab.sh("pgrep", "etcd", check=False).stdout.split()
    assert not set(map(str, etcd_pids)) & set(running)
    assert not [ln for ln in lab.sh("ip", "-o", "link").stdout.splitlines() if c.prefix in ln]


def test_a_lab_that_fails_to_start_leaves_nothing(require_root):
    prefixes = []

    class Probe(clusterlab.Cluster):
        def __init__(self, **kw):
            prefixes.append(self)
            super().__init__(**kw)

    with pytest.raises(RuntimeError, match="no-such-key"):
        Probe(nodes=2, etcd=False, config={"no-such-key": 1})
    assert clusterlab.leftovers(prefixes[0].prefix) == []
