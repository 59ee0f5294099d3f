"""What must hold when parts of a cluster fail (three nodes, a 3-member
etcd), with real packets: a member killed changes nothing; without quorum
pods keep their traffic and enforcement, an ADD with a known label set
works, one needing a new identity fails fast with code 11 naming etcd, DEL
works, and the cluster converges when quorum returns; an agent restarted
with pods running loses no packet of an established flow and never lets a
denied one through; an agent killed loses its entries everywhere when its
lease expires, one restarted within the TTL never does; and 200 pods
created and deleted on 3 nodes leave no key in etcd and no map entry, while
one new label set raced on 3 nodes, 20 times, always gets one identity."""

import subprocess
import threading
import time

import pytest

from scripts import clusterlab
from tests import lab
from tests.cluster.test_kvstore import ipcache, remote_ips, wait_for
from tests.policy.test_pods import import_policy

pytestmark = pytest.mark.e2e

TTL = 5
POLICY = """
    apiVersion: cilium.io/v2
    kind: CiliumNetworkPolicy
    metadata: {name: web-from-client}
    spec:
      endpointSelector: {matchLabels: {app: web}}
      ingress:
      - fromEndpoints: [{matchLabels: {app: client}}]
"""

# UDP to an echo server every `gap` s for `seconds`: how many answers came back
STREAM = r"""
import socket, sys, time
addr, port, seconds, gap = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(gap)
sent = got = 0
end = time.monotonic() + seconds
while time.monotonic() < end:
    sent += 1
    s.sendto(b'%d' % sent, (addr, port))
    t = time.monotonic() + gap
    while time.monotonic() < t:
        try:
            data = s.recvfrom(100)[0]
            got += 1
        except OSError:
            break
print(sent, got)
"""


@pytest.fixture(scope="module")
def kv(require_root, tmp_path_factory):
    config = clusterlab.kvstore_config(**{"kvstore-lease-ttl": TTL,
                                          "identity-grace-seconds": 2})
    with clusterlab.Cluster(nodes=3, node_config=config) as c:
        n0, n1, n2 = c.nodes
        c.pods = {"web": n0.add_pod("web", labels={"app": "web"}),
                  "client": n1.add_pod("client", labels={"app": "client"}),
                  "intruder": n2.add_pod("intruder", labels={"app": "intruder"})}
        servers = [lab.EchoServer(c.pods["web"].netns, p, 8080) for p in ("tcp", "udp")]
        wait_for(lambda: all(len(remote_ips(n)) == 2 for n in c.nodes), "remote pods known")
        import_policy(n2.agent, tmp_path_factory.mktemp("policy"), POLICY)
        wait_for(lambda: lab.talks(c.pods["client"].netns, "tcp", c.pods["web"].ip, 8080),
                 "the policy everywhere")
        try:
            yield c
        finally:
            for s in servers:
                s.stop()


def enforced(kv):
    """The policy's verdicts, both ways it can go."""
    web = kv.pods["web"].ip
    return (lab.talks(kv.pods["client"].netns, "tcp", web, 8080),
            lab.talks(kv.pods["intruder"].netns, "tcp", web, 8080))


def stream(pod, addr, seconds, gap=0.01):
    return subprocess.Popen(["ip", "netns", "exec", pod.netns.name, "python3", "-c", STREAM,
                             addr, "8080", str(seconds), str(gap)],
                            stdout=subprocess.PIPE, text=True)


def add_fails(node, name, labels):
    try:
        node.add_pod(name, labels=labels)
    except lab.PluginFailed as exc:
        node.pods.pop(name, None)
        return exc.out
    return None


def test_one_member_killed_changes_nothing(kv):
    n0, n1, _ = kv.nodes
    leader = kv.etcd.leader()
    kv.etcd.kill(leader)
    try:
        assert enforced(kv) == (True, False)
        pod = n1.add_pod("newset1", labels={"app": "new-with-two-members"})
        wait_for(lambda: pod.ip in remote_ips(n0), "the new pod on node 0")
        n1.delete_pod("newset1")
        assert all(n.agent.api("GET", "/v1/status")[1]["kvstore"]["reachable"] for n in kv.nodes)
    finally:
        kv.etcd.start(leader)
        kv.etcd.wait_healthy()


def test_quorum_lost_then_back(kv):
    n0, n1, n2 = kv.nodes
    killed = [i for i in range(3) if i != kv.etcd.leader()][:1] + [kv.etcd.leader()]
    for i in killed:
        kv.etcd.kill(i)
    try:
        assert enforced(kv) == (True, False)  # traffic and enforcement go on
        known = n1.add_pod("known", labels={"app": "client"})  # a known label set
        client_id = {tuple(e["labels"]): e["identity"] for e in n1.agent.endpoints()}
        assert client_id[("cni:app=client",)] == [e["identity"] for e in n1.agent.endpoints()
                                                  if e["containerID"] == known.container_id][0]
        # (node 0 learns its address only through etcd: it is allowed to web
        # once quorum is back, below)
        started = time.monotonic()
        out = add_fails(n2, "fresh", {"app": "never-seen"})
        took = time.monotonic() - started
        assert out is not None and out["code"] == 11, out
        assert "etcd" in out["msg"] and "new label set" in out["msg"], out
        assert took < 8, took
        n2.delete_pod("intruder")  # DEL always works
        kv.pods.pop("intruder")
        assert enforced_client_only(kv)
    finally:
        for i in killed:
            kv.etcd.start(i)
        kv.etcd.wait_healthy()
    # the agents converge without a restart: queued writes land, new sets allocate
    wait_for(lambda: known.ip in remote_ips(n0), "the pod added without quorum, on node 0",
             timeout=30)
    wait_for(lambda: lab.talks(known.netns, "tcp", kv.pods["web"].ip, 8080),
             "the pod added without quorum allowed to web")
    fresh = n2.add_pod("fresh", labels={"app": "never-seen"})
    wait_for(lambda: fresh.ip in remote_ips(n0), "a new label set after quorum", timeout=15)
    kv.pods["intruder"] = n2.add_pod("intruder", labels={"app": "intruder"})
    wait_for(lambda: enforced(kv) == (True, False), "the policy for the new intruder")
    n1.delete_pod("known")
    n2.delete_pod("fresh")


def enforced_client_only(kv):
    return lab.talks(kv.pods["client"].netns, "tcp", kv.pods["web"].ip, 8080)


@pytest.mark.parametrize("which", [0, 1])
def test_an_agent_restarted_loses_no_packet_and_allows_nothing(kv, which):
    """The web pod's node (0) or the client's (1) restarts its agent while
    a UDP flow runs client -> web every 10 ms and the intruder probes web
    every 10 ms."""
    node = kv.nodes[which]
    web = kv.pods["web"].ip
    allowed = stream(kv.pods["client"], web, 6.0)
    denied = stream(kv.pods["intruder"], web, 6.0)
    time.sleep(0.5)
    node.restart_agent()
    sent, got = map(int, allowed.communicate(timeout=30)[0].split())
    probes, answers = map(int, denied.communicate(timeout=30)[0].split())
    assert "joined etcd" in node.agent.log()
    assert got == sent and sent > 100, (sent, got)
    assert answers == 0 and probes > 100, (probes, answers)


def test_a_dead_agent_loses_its_entries_at_ttl_a_restart_within_it_never(kv):
    n0, n1, n2 = kv.nodes
    client = kv.pods["client"].ip
    # restart within the TTL: node 0 watches node 1's pod the whole time
    missing, stop = [], threading.Event()

    def watch():
        while not stop.is_set():
            if client not in ipcache(n0):
                missing.append(time.monotonic())
            time.sleep(0.02)
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        n1.kill_agent()
        time.sleep(1)
        n1.start_agent()
        time.sleep(TTL + 1)
    finally:
        stop.set()
        watcher.join()
    assert missing == []
    # dead for longer than the TTL: gone everywhere, back when it returns
    n1.kill_agent()
    wait_for(lambda: client not in ipcache(n0) and client not in ipcache(n2),
             "node 1's pod leaving the other nodes", timeout=TTL + 15)
    assert enforced(kv)[1] is False
    n1.start_agent()
    wait_for(lambda: client in remote_ips(n0) and client in remote_ips(n2),
             "node 1's pod back", timeout=15)
    wait_for(lambda: enforced(kv) == (True, False), "the client allowed again")


def test_one_new_label_set_raced_on_three_nodes_gets_one_identity(kv):
    for round_ in range(20):
        labels = {"app": "race%d" % round_}
        names = ["race%d-%d" % (round_, i) for i in range(3)]
        errors = lab.in_parallel([(n.add_pod, name, labels)
                                  for n, name in zip(kv.nodes, names, strict=True)])
        assert not errors, errors
        ids = {e["identity"] for n in kv.nodes for e in n.agent.endpoints()
               if e["labels"] == ["cni:app=race%d" % round_]}
        assert len(ids) == 1, (round_, ids)
        for n, name in zip(kv.nodes, names, strict=True):
            n.delete_pod(name)


def test_churn_leaves_no_key_and_no_entry(kv):
    before = {n.name: set(ipcache(n)) for n in kv.nodes}
    ips = []

    def churn(node, count):
        for i in range(count):
            name = "churn%d" % i
            pod = node.add_pod(name, labels={"app": "churn%d" % (i % 7)})
            ips.append(pod.ip)
        for i in range(count):
            node.delete_pod("churn%d" % i)
    errors = lab.in_parallel([(churn, n, count) for n, count in zip(kv.nodes, (67, 67, 66),
                                                                     strict=True)],
                             timeout=600)
    assert not errors, errors
    assert len(ips) == 200
    prefix = kv.prefix + "/"

    def leftovers():
        kvs = kv.etcd.get_prefix(prefix)
        churn_ids = {k.rsplit("/", 1)[1] for k, v in kvs.items() if "/id/" in k and "churn" in v}
        return [k for k, v in kvs.items() if "churn" in k or "churn" in v
                or "/ip/v1/" in k and k.split("/ip/v1/")[1].split("/")[0] in ips
                or "/users/" in k and k.split("/users/")[1].split("/")[0] in churn_ids]
    wait_for(lambda: not leftovers(), "no key of the churned pods in etcd", timeout=60)
    for node in kv.nodes:
        assert set(ipcache(node)) == before[node.name], node.name
        assert not [e for e in node.agent.endpoints() if "churn" in str(e["labels"])]
