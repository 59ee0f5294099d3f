"""Three nodes sharing one etcd cluster (`kvstore: etcd`), with real packets:
one identity per label set on every node, policy between pods of different
nodes in both directions (TCP and UDP) imported on a third node, the same
policy revision everywhere, services whose backends are pods of other
nodes reached from pods and host processes of every node (NodePort
included, and from outside through a NodePort device, SNAT'd), and values
under the prefix that no agent wrote (not JSON, wrong types, unknown
schema, huge) skipped without harm."""

import os
import time

import pytest

from datapath import bpfsys
from datapath.maps.ipcache import IPCACHE_KEY, IPCACHE_VAL, REMOTE, ipcache_cidr
from scripts import clusterlab
from tests import lab
from tests.policy.test_pods import import_policy

pytestmark = pytest.mark.e2e

MUTUAL = """
    apiVersion: cilium.io/v2
    kind: CiliumNetworkPolicy
    metadata: {name: web-and-client}
    specs:
    - endpointSelector: {matchLabels: {app: web}}
      ingress:
      - fromEndpoints: [{matchLabels: {app: client}}]
    - endpointSelector: {matchLabels: {app: client}}
      ingress:
      - fromEndpoints: [{matchLabels: {app: web}}]
"""


@pytest.fixture(scope="module")
def kv(require_root):
    config = clusterlab.kvstore_config(**{"kvstore-lease-ttl": 5, "nodeport-devices": ["lan0"]})
    with clusterlab.Cluster(nodes=3, node_config=config) as c:
        n0, n1, n2 = c.nodes
        pods = {"web": n0.add_pod("web", labels={"app": "web"}),
                "intruder0": n0.add_pod("intruder0", labels={"app": "intruder"}),
                "web1": n1.add_pod("web1", labels={"app": "web"}),
                "client": n2.add_pod("client", labels={"app": "client"}),
                "intruder2": n2.add_pod("intruder2", labels={"app": "intruder"})}
        servers = [lab.EchoServer(pods[p].netns, proto, 8080)
                   for p in ("web", "web1", "client") for proto in ("tcp", "udp")]
        c.pods = pods
        try:
            wait_for(lambda: all(len(remote_ips(n)) >= 3 for n in c.nodes), "remote pods known")
            yield c
        finally:
            for s in servers:
                s.stop()


def wait_for(predicate, what, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for %s" % what)
        time.sleep(0.05)


def ipcache(node):
    """ip -> (identity, flags) of the node's pinned ipcache map."""
    fd = bpfsys.obj_get("%s/maps/ipcache" % node.bpf_root)
    try:
        out = {}
        for key in bpfsys.keys(fd, IPCACHE_KEY.size):
            value = bpfsys.lookup(fd, key, IPCACHE_VAL.size)
            if value is not None:
                out[ipcache_cidr(key).split("/")[0]] = IPCACHE_VAL.unpack(value)
        return out
    finally:
        os.close(fd)


def remote_ips(node):
    """Addresses the node's ipcache marks as other nodes' pods."""
    return {ip for ip, (_, flags) in ipcache(node).items() if flags & REMOTE}


def talks(kv, src, dst, proto="tcp", port=8080):
    return lab.talks(kv.pods[src].netns, proto, kv.pods[dst].ip, port)


def host_talks(node, addr, port, proto="tcp"):
    out = node.run("python3", "-c", lab.ECHO_CLIENT, proto, addr, str(port), "1.5", check=False,
                   timeout=15)
    return out.stdout.strip() == "ok"


def test_one_label_set_has_one_identity_on_every_node(kv):
    by_node = [{tuple(e["labels"]): e["identity"] for e in n.agent.endpoints()} for n in kv.nodes]
    web = by_node[0][("cni:app=web",)]
    assert by_node[1][("cni:app=web",)] == web
    assert by_node[0][("cni:app=intruder",)] == by_node[2][("cni:app=intruder",)]
    # every node maps every pod to its identity; other nodes' pods marked remote
    for node in kv.nodes:
        seen = ipcache(node)
        for pod_name, pod in kv.pods.items():
            labels = ("cni:app=%s" % pod_name.rstrip("012"),)
            identity = [b for b in by_node if labels in b][0][labels]
            flags = 0 if pod_name in node.pods else REMOTE
            assert seen.get(pod.ip) == (identity, flags), (node.name, pod_name)


def test_policy_between_nodes_in_both_directions_imported_on_a_third(kv, tmp_path):
    n0, n1, n2 = kv.nodes
    for proto in ("tcp", "udp"):
        assert talks(kv, "intruder2", "web", proto)  # no policy yet
    import_policy(n1.agent, tmp_path, MUTUAL)
    try:
        wait_for(lambda: len({n.agent.api("GET", "/v1/policy")[1]["revision"]
                              for n in kv.nodes}) == 1, "one revision everywhere")
        views = [n.agent.api("GET", "/v1/policy")[1] for n in kv.nodes]
        assert views[0] == views[1] == views[2] and views[0]["revision"] >= 1, views
        assert views[0]["rules"][0]["source"].startswith("kvstore:")
        for proto in ("tcp", "udp"):
            wait_for(lambda p=proto: talks(kv, "client", "web", p), "client -> web " + proto)
            assert talks(kv, "web", "client", proto)          # n0 -> n2
            assert not talks(kv, "intruder2", "web", proto)   # n2 -> n0, denied
            assert not talks(kv, "intruder0", "client", proto)  # n0 -> n2, denied
            assert talks(kv, "client", "web1", proto)         # n2 -> n1
    finally:
        n2.cli("policy", "delete", "--all")  # deleted from another node than imported
    wait_for(lambda: all(not n.agent.api("GET", "/v1/policy")[1]["rules"] for n in kv.nodes),
             "the delete everywhere")
    wait_for(lambda: talks(kv, "intruder2", "web"), "traffic allowed again")


def test_services_with_backends_on_other_nodes(kv):
    n0, n1, n2 = kv.nodes
    web, web1 = kv.pods["web"], kv.pods["web1"]
    # one service per backend node (so each answer proves that node's backend),
    # one with both, and a NodePort whose backend is on n1; made on n2
    n2.cli("service", "update", "--frontend", "10.96.50.1:80", "--backends", "%s:8080" % web.ip)
    n2.cli("service", "update", "--frontend", "10.96.50.2:80", "--backends", "%s:8080" % web1.ip)
    n2.cli("service", "update", "--frontend", "10.96.50.3:80/udp", "--backends",
           "%s:8080,%s:8080" % (web.ip, web1.ip))
    n2.cli("service", "update", "--frontend", "0.0.0.0:30080", "--type", "NodePort",
           "--backends", "%s:8080" % web1.ip)
    try:
        wait_for(lambda: all(len(n.agent.api("GET", "/v1/services")[1]) == 4 for n in kv.nodes),
                 "services on every node")
        for src in ("client", "intruder0"):  # pods on n2 and n0
            assert lab.talks(kv.pods[src].netns, "tcp", "10.96.50.1", 80), src
            assert lab.talks(kv.pods[src].netns, "tcp", "10.96.50.2", 80), src
            assert lab.talks(kv.pods[src].netns, "udp", "10.96.50.3", 80), src
        for node in kv.nodes:  # host processes (socket hooks on the node's cgroup)
            assert host_talks(node, "10.96.50.1", 80), node.name
            assert host_talks(node, "10.96.50.2", 80), node.name
            assert host_talks(node, node.address, 30080), node.name  # NodePort, own address
        # a pod reaching its node's NodePort; a client outside every node
        # through n0's NodePort device: the backend on n1 answers through n0 (SNAT)
        assert lab.talks(kv.pods["intruder0"].netns, "tcp", n0.address, 30080)
        assert lab.talks(kv.lan.ns, "tcp", n0.address, 30080)
    finally:
        n0.cli("service", "delete", "--all")
    wait_for(lambda: all(not n.agent.api("GET", "/v1/services")[1] for n in kv.nodes),
             "services gone everywhere")


@pytest.mark.parametrize("key,value", [
    ("identities/v1/id/999", "not json"),
    ("identities/v1/id/1000", '{"v":1,"labels":{"app":"x"}}'),
    ("ip/v1/%(pod)s/32", '{"v":1,"identity":2,"node":"elsewhere"}'),   # a claim on a pod's IP
    ("ip/v1/10.250.0.1/32", '{"v":7,"identity":300,"node":"x"}'),
    ("ip/v1/10.250.0.2/32", '{"v":1,"identity":"300","node":"x"}'),
    ("ip/v1/not-an-ip", '{"v":1,"identity":300,"node":"x"}'),
    ("nodes/v1/ghost", '{"v":1,"name":"other","addresses":[],"podCIDRs":[]}'),
    ("policies/v1/sources/evil.yaml", '{"v":1,"text":"spec: [unclosed"}'),
    ("services/v1/10.96.99.9:80/tcp", '{"v":1,"service":{"frontend":"10.96.99.9:80",'
                                       '"backends":["999.1.1.1:1"]}}'),
    ("identities/v1/id/1001", '{"v":1,"labels":"%s"}' % ("x" * 40000)),
])
def test_foreign_values_are_logged_and_skipped(kv, key, value):
    """A value no agent wrote is skipped with its key in the log; nothing
    of it is applied, no agent stops, traffic is as before."""
    pod = kv.pods["client"]
    owned = "%(pod)s" in key  # a key of the web pod's node, which writes it back
    key = key % {"pod": kv.pods["web"].ip}
    full = "%s/%s" % (kv.prefix, key)
    before = [ipcache(n) for n in kv.nodes]
    original = kv.etcd.get_prefix(full).get(full)
    kv.etcd.put(full, value)
    try:
        for node in kv.nodes:
            wait_for(lambda n=node: full in n.agent.log() or key in n.agent.log(),
                     "a log line naming %s on %s" % (key, node.name))
        time.sleep(0.3)
        for node, had in zip(kv.nodes, before, strict=True):
            assert node.agent.proc.poll() is None
            assert ipcache(node) == had
            assert node.agent.api("GET", "/v1/healthz")[0] == 200
        assert not any(s["frontend"]["address"] == "10.96.99.9"
                       for n in kv.nodes for s in n.agent.api("GET", "/v1/services")[1])
        assert not any(r["source"] == "kvstore:evil.yaml"
                       for n in kv.nodes for r in n.agent.api("GET", "/v1/policy")[1]["rules"])
        assert lab.talks(pod.netns, "tcp", kv.pods["web"].ip, 8080)
        if owned:  # its node wrote its own value back
            wait_for(lambda: kv.etcd.get_prefix(full).get(full) == original, "the owner's value")
    finally:
        if not owned:
            kv.etcd.ctl("del", full)
