"""Policy enforcement with real packets: a pod netns behind its host veth
(the host is the remote peer), or two pods on a bridge, with our programs
on the host veths and the maps written through the Datapath API."""

import json
import time

import pytest

from datapath.maps.endpoints import FLAG_EGRESS_ENFORCED, FLAG_INGRESS_ENFORCED
from tests import lab
from tests.kernel import probe

pytestmark = pytest.mark.kernel

EP, EP_B = 42, 43
POD_ID, POD_B_ID, HOST_ID, OTHER_ID = 1000, 1001, 1, 777
BOTH = FLAG_INGRESS_ENFORCED | FLAG_EGRESS_ENFORCED


def pings(ping, ip, ns=None):
    cmd = [*ping, "-c", "1", "-W", "1", ip]
    if ns is not None:
        return ns.run(*cmd, check=False).returncode == 0
    return lab.sh(*cmd, check=False).returncode == 0


def wait_event(datapath, events, match, timeout=3.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for ev in events:
            if all(ev.get(k) == v for k, v in match.items()):
                return ev
        datapath.poll_events(100)
    raise AssertionError(f"no event like {match} in {events}")


@pytest.fixture
def enforced(datapath, pod):
    """The pod's programs attached, its endpoint known, the host in the ipcache."""
    datapath.attach(pod.host_ifindex)
    datapath.ipcache.set(pod.host_ip, HOST_ID)

    def setup(flags, entries=()):
        datapath.endpoints.set(pod.host_ifindex, EP, identity=POD_ID, flags=flags)
        datapath.policy.clear(EP)
        datapath.ct.flush(EP)
        datapath.policy.update(EP, entries)

    return setup


def test_default_deny_drops_counts_and_reports(datapath, pod, ping, enforced):
    events = []
    datapath.open_events(events.append)
    enforced(BOTH)
    assert not pings(ping, pod.pod_ip)
    assert not pings(ping, pod.host_ip, ns=pod.netns)
    stats = datapath.metrics.stats(EP)
    assert stats["ingress"]["drops"]["policy-denied"] >= 1
    assert stats["egress"]["drops"]["policy-denied"] >= 1
    assert stats["ingress"]["drops"]["policy-deny"] == 0
    ev = wait_event(datapath, events, {"direction": "ingress", "proto": "ICMP"})
    assert ev["reason"] == "policy-denied" and ev["epID"] == EP
    assert (ev["srcIdentity"], ev["dstIdentity"]) == (HOST_ID, POD_ID)
    assert (ev["src"], ev["dst"]) == (pod.host_ip, pod.pod_ip)
    assert ev["sport"] == ev["dport"]  # the echo id
    assert abs(ev["time"] - time.time()) < 10
    ev = wait_event(datapath, events, {"direction": "egress", "proto": "ICMP"})
    assert (ev["srcIdentity"], ev["dstIdentity"], ev["src"], ev["dst"]) == (POD_ID, HOST_ID, pod.pod_ip, pod.host_ip)
    # Not enforced: the same traffic flows (and creates connections).
    enforced(0)
    assert pings(ping, pod.pod_ip)
    assert {c["direction"] for c in datapath.ct.entries(EP)} == {"ingress"}


def test_arp_passes_under_full_enforcement(datapath, pod, ping, enforced):
    enforced(BOTH)
    lab.sh("ip", "neigh", "flush", "dev", pod.host_ifname)
    pod.netns.run("ip", "neigh", "flush", "dev", "eth0")
    assert not pings(ping, pod.pod_ip)  # ICMP is dropped...
    neigh = json.loads(lab.sh("ip", "-j", "neigh", "show", "dev", pod.host_ifname, "to", pod.pod_ip).stdout)
    # ...but ARP went both ways: the host learnt the pod's MAC.
    assert neigh and neigh[0].get("lladdr") == pod.pod_link()["address"], neigh
    assert datapath.metrics.stats(EP)["egress"]["packets"] >= 1  # the pod's ARP reply


def test_l3_allow_by_identity_through_the_ipcache(datapath, pod, ping, enforced):
    enforced(FLAG_INGRESS_ENFORCED, [("ingress", OTHER_ID, 0, 0, 0, False)])
    assert not pings(ping, pod.pod_ip)  # the host is identity 1, not 777
    datapath.ipcache.set(pod.host_ip, OTHER_ID)
    assert pings(ping, pod.pod_ip)
    # Longest prefix: a covering prefix still gives 777 without the /32.
    datapath.ipcache.delete(pod.host_ip)
    datapath.ipcache.set("10.0.0.0/8", OTHER_ID)
    datapath.ct.flush(EP)
    assert pings(ping, pod.pod_ip)
    assert datapath.ipcache.entries() == {"10.0.0.0/8": OTHER_ID}
    # Without any entry the host is world (2), allowed by an identity-2 entry.
    datapath.ipcache.delete("10.0.0.0/8")
    enforced(FLAG_EGRESS_ENFORCED, [("egress", 2, 1, 0, 0, False)])
    assert pings(ping, pod.host_ip, ns=pod.netns)
    [(entry, hits)] = datapath.policy.entries(EP)
    assert entry == ("egress", 2, 1, 0, 0, False) and hits >= 1


def test_l4_ports_and_port_ranges(datapath, pod, serve, enforced):
    serve(pod.netns, "tcp", 8080, 8085, 8088)
    serve(pod.netns, "udp", 5353, 5354)
    enforced(FLAG_INGRESS_ENFORCED, [
        ("ingress", HOST_ID, 6, 8080, 16, False),
        ("ingress", HOST_ID, 17, 5353, 16, False),
    ])
    assert probe(None, "tcp", pod.pod_ip, 8080)
    assert not probe(None, "tcp", pod.pod_ip, 8085)
    assert probe(None, "udp", pod.pod_ip, 5353)
    assert not probe(None, "udp", pod.pod_ip, 5354)
    assert not probe(None, "udp", pod.pod_ip, 8080)  # the port is TCP's
    # 8080-8087 as one /13 block.
    datapath.policy.update(EP, [("ingress", HOST_ID, 6, 8080, 13, False)], [("ingress", HOST_ID, 6, 8080, 16, False)])
    assert probe(None, "tcp", pod.pod_ip, 8085)
    assert probe(None, "tcp", pod.pod_ip, 8080)
    assert not probe(None, "tcp", pod.pod_ip, 8088)
    hits = dict(datapath.policy.entries(EP))
    assert hits[("ingress", HOST_ID, 6, 8080, 13, False)] >= 2
    assert datapath.metrics.stats(EP)["ingress"]["drops"]["policy-denied"] >= 3


def test_deny_entry_beats_allow(datapath, pod, serve, enforced):
    serve(pod.netns, "tcp", 8080, 9000)
    events = []
    datapath.open_events(events.append)
    enforced(FLAG_INGRESS_ENFORCED, [
        ("ingress", 0, 0, 0, 0, False),  # allow all
        ("ingress", HOST_ID, 6, 8080, 16, True),
    ])
    assert probe(None, "tcp", pod.pod_ip, 9000)
    assert not probe(None, "tcp", pod.pod_ip, 8080)
    ev = wait_event(datapath, events, {"dport": 8080})
    assert ev["reason"] == "policy-deny" and ev["proto"] == "TCP" and ev["srcIdentity"] == HOST_ID
    assert datapath.metrics.stats(EP)["ingress"]["drops"]["policy-deny"] >= 1
    # A deny for another identity leaves the host alone.
    datapath.policy.update(EP, [("ingress", OTHER_ID, 6, 8080, 16, True)], [("ingress", HOST_ID, 6, 8080, 16, True)])
    assert probe(None, "tcp", pod.pod_ip, 8080)


def test_replies_of_allowed_connections_pass_both_ways(datapath, bridged_pods, serve, ping):
    a, b = bridged_pods(2)
    for pod, ep, identity in ((a, EP, POD_ID), (b, EP_B, POD_B_ID)):
        datapath.attach(pod.host_ifindex)
        datapath.endpoints.set(pod.host_ifindex, ep, identity=identity, flags=BOTH)
        datapath.ipcache.set(pod.ip, identity)
    # A may open TCP 8080 / UDP 5353 to B, B may accept them from A; A
    # accepts nothing, B sends nothing: the replies pass by ct alone.
    datapath.policy.update(EP, [("egress", POD_B_ID, 6, 8080, 16, False), ("egress", POD_B_ID, 17, 5353, 16, False)])
    datapath.policy.update(EP_B, [("ingress", POD_ID, 6, 8080, 16, False), ("ingress", POD_ID, 17, 5353, 16, False)])
    serve(b.netns, "tcp", 8080)
    serve(b.netns, "udp", 5353)
    serve(a.netns, "tcp", 8080)
    assert probe(a.netns, "tcp", b.ip, 8080)
    assert probe(a.netns, "udp", b.ip, 5353)
    assert not probe(b.netns, "tcp", a.ip, 8080)  # B -> A is not allowed
    assert not pings(ping, b.ip, ns=a.netns)
    a_conns = {(c["direction"], c["proto"], c["dport"]) for c in datapath.ct.entries(EP)}
    b_conns = {(c["direction"], c["proto"], c["dport"]) for c in datapath.ct.entries(EP_B)}
    assert {("egress", "TCP", 8080), ("egress", "UDP", 5353)} <= a_conns
    assert {("ingress", "TCP", 8080), ("ingress", "UDP", 5353)} <= b_conns
    stats_a, stats_b = datapath.metrics.stats(EP), datapath.metrics.stats(EP_B)
    assert stats_a["ingress"]["packets"] >= 2 and stats_b["egress"]["packets"] >= 2  # the replies
    # Once the connections are gone, a "reply" is a new connection: dropped.
    datapath.ct.flush()
    assert not probe(b.netns, "udp", a.ip, 5353)


def test_connections_expire_and_are_refreshed_by_use(make_datapath, pod, serve):
    datapath = make_datapath(defines={"CT_LIFETIME_NONTCP": 2})
    datapath.attach(pod.host_ifindex)
    datapath.ipcache.set(pod.host_ip, HOST_ID)
    datapath.endpoints.set(pod.host_ifindex, EP, identity=POD_ID, flags=BOTH)
    datapath.policy.update(EP, [("egress", HOST_ID, 17, 5353, 16, False)])
    host_server = serve(None, "udp", 5353)
    # The pod opens pod:40000 -> host:5353 ...
    assert probe(pod.netns, "udp", pod.host_ip, 5353, sport=40000)
    [conn] = datapath.ct.entries(EP)
    assert (conn["direction"], conn["sport"], conn["dport"]) == ("egress", 40000, 5353)
    assert 0 < conn["expiresIn"] <= 2
    host_server.kill()
    host_server.wait()
    # ... so host:5353 -> pod:40000 is its reply while the connection
    # lives, and every packet extends it past the 2 s lifetime.
    serve(pod.netns, "udp", 40000)
    for _ in range(3):
        time.sleep(1.2)
        assert probe(None, "udp", pod.pod_ip, 40000, sport=5353)
    time.sleep(2.5)
    assert datapath.ct.entries(EP)[0]["expiresIn"] < 0
    dropped = datapath.metrics.stats(EP)["ingress"]["drops"]["policy-denied"]
    assert not probe(None, "udp", pod.pod_ip, 40000, sport=5353)
    assert datapath.metrics.stats(EP)["ingress"]["drops"]["policy-denied"] > dropped
    assert datapath.ct.gc() == 1
    assert datapath.ct.entries(EP) == []


def test_ipv6_is_enforced_and_neighbour_discovery_passes(datapath, pod, ping, serve, enforced):
    host6 = pod.pod_cidrs[1].split("/")[0].rsplit("::", 1)[0] + "::1"
    pod6 = pod.pod_cidrs[1].split("/")[0]
    lab.sh("ip", "addr", "add", f"{host6}/64", "dev", pod.host_ifname, "nodad")
    datapath.ipcache.set(host6, HOST_ID)
    events = []
    datapath.open_events(events.append)
    serve(pod.netns, "tcp", 8080, 8081)
    enforced(FLAG_INGRESS_ENFORCED, [("ingress", HOST_ID, 6, 8080, 16, False)])
    assert not pings(ping, pod6)
    ev = wait_event(datapath, events, {"proto": "ICMPv6", "direction": "ingress"})
    assert (ev["src"], ev["dst"], ev["srcIdentity"], ev["reason"]) == (host6, pod6, HOST_ID, "policy-denied")
    # TCP works: neighbour solicitations and advertisements passed both
    # hooks though no ICMPv6 entry exists.
    assert probe(None, "tcp", pod6, 8080)
    assert not probe(None, "tcp", pod6, 8081, timeout=0.5)
    datapath.policy.update(EP, [("ingress", HOST_ID, 58, 0, 0, False)])
    assert pings(ping, pod6)
