"""The BPF_PROG_TEST_RUN harness itself, and ct details easiest to reach
with crafted packets (TCP close, re-open, expiry, invalid headers)."""

import time

import pytest

from datapath import bpfsys
from datapath.errors import DatapathError
from datapath.maps.ct import CT_KEY, CT_VAL
from datapath.maps.endpoints import FLAG_EGRESS_ENFORCED, FLAG_INGRESS_ENFORCED
from datapath.maps.fields import DIR_EGRESS
from tests.datapath import packets as tr

pytestmark = pytest.mark.kernel

EP = 9
POD, PEER = "10.9.9.9", "10.1.2.3"


def test_ifindex_selects_the_endpoint(datapath, pod):
    frame = tr.packet(PEER, POD, tr.UDP, 1, 2)
    # A device without an endpoints entry: passes, counted under 0.
    assert tr.run(datapath, "ingress", frame, ifindex=pod.host_ifindex) == tr.TC_ACT_UNSPEC
    assert datapath.metrics.stats(0)["ingress"]["packets"] == 1
    datapath.endpoints.set(pod.host_ifindex, EP, flags=FLAG_INGRESS_ENFORCED)
    assert tr.run(datapath, "ingress", frame, ifindex=pod.host_ifindex) == tr.TC_ACT_SHOT
    assert tr.run(datapath, "ingress", frame, ifindex=1) == tr.TC_ACT_UNSPEC  # lo: no entry
    assert datapath.metrics.stats(EP)["ingress"]["drops"]["policy-denied"] == 1
    with pytest.raises(DatapathError, match="no such device"):
        tr.run(datapath, "ingress", frame, ifindex=2**31 - 1)


def test_tcp_close_shortens_the_connection_and_syn_reopens_it(make_datapath):
    dp = make_datapath(defines={"CT_LIFETIME_TCP_CLOSE": 1})
    dp.endpoints.set(1, EP, flags=FLAG_INGRESS_ENFORCED | FLAG_EGRESS_ENFORCED)
    dp.policy.update(EP, [("egress", 0, 6, 443, 16, False)])

    def out(flags):
        return tr.run(dp, "egress", tr.packet(POD, PEER, tr.TCP, 40000, 443, flags))

    def back(flags):
        return tr.run(dp, "ingress", tr.packet(PEER, POD, tr.TCP, 443, 40000, flags))

    assert out(tr.TCP_SYN) == tr.TC_ACT_UNSPEC
    assert back(tr.TCP_SYN | tr.TCP_ACK) == tr.TC_ACT_UNSPEC
    [conn] = dp.ct.entries(EP)
    assert conn["expiresIn"] > 21000 and not conn["closing"] and conn["packets"] == 2
    assert back(tr.TCP_FIN | tr.TCP_ACK) == tr.TC_ACT_UNSPEC
    [conn] = dp.ct.entries(EP)
    assert conn["closing"] and 0 < conn["expiresIn"] <= 1
    time.sleep(1.2)
    assert back(tr.TCP_ACK) == tr.TC_ACT_SHOT  # expired: a new connection, not allowed in
    assert out(tr.TCP_SYN) == tr.TC_ACT_UNSPEC  # a new connection, allowed out
    [conn] = dp.ct.entries(EP)
    assert not conn["closing"] and conn["expiresIn"] > 21000
    assert back(tr.TCP_RST) == tr.TC_ACT_UNSPEC
    assert dp.ct.entries(EP)[0]["closing"]


@pytest.mark.parametrize("pod, peer", [(POD, PEER), (PEER, POD), ("fd00::9", "fd00::1"), ("fd00::1", "fd00::9")])
def test_one_entry_serves_both_directions_and_only_them(datapath, pod, peer):
    """Whichever end sorts first, a connection and its replies share one ct
    entry; the same tuple the other way round (a pod reaching itself
    through a service) is another connection with a verdict of its own."""
    datapath.endpoints.set(1, EP, flags=FLAG_INGRESS_ENFORCED | FLAG_EGRESS_ENFORCED)
    datapath.policy.update(EP, [("egress", 0, 6, 443, 16, False)])
    assert tr.run(datapath, "egress", tr.packet(pod, peer, tr.TCP, 40000, 443, tr.TCP_SYN)) == tr.TC_ACT_UNSPEC
    reply = tr.packet(peer, pod, tr.TCP, 443, 40000, tr.TCP_SYN | tr.TCP_ACK)
    assert tr.run(datapath, "ingress", reply) == tr.TC_ACT_UNSPEC
    [conn] = datapath.ct.entries(EP)
    assert (conn["direction"], conn["src"], conn["dst"], conn["sport"], conn["dport"], conn["packets"]) == (
        "egress", pod, peer, 40000, 443, 2)
    # the tuple of the egress packet, arriving: not part of that connection
    assert tr.run(datapath, "ingress", tr.packet(pod, peer, tr.TCP, 40000, 443, tr.TCP_SYN)) == tr.TC_ACT_SHOT
    # nor the reply's tuple leaving
    assert tr.run(datapath, "egress", tr.packet(peer, pod, tr.TCP, 443, 40000, tr.TCP_ACK)) == tr.TC_ACT_SHOT
    assert datapath.metrics.stats(EP)["ingress"]["drops"]["policy-denied"] == 1


def test_connections_of_older_programs_are_rekeyed(datapath, map_fd):
    """An entry as programs before canonical keys wrote it (keyed as its
    first packet went, no flags) keeps its connection across the upgrade
    once ct_migrate has run: replies pass under ingress enforcement."""
    datapath.endpoints.set(1, EP, flags=FLAG_INGRESS_ENFORCED)
    fd = map_fd("ct")
    old = {}
    for sport in (40000, 40001):  # POD sorts after PEER: both need re-keying; a UDP one too
        old[sport] = CT_KEY.pack(bytes([10, 9, 9, 9]) + bytes(12), bytes([10, 1, 2, 3]) + bytes(12),
                                      sport.to_bytes(2, "big"), (443).to_bytes(2, "big"),
                                      6 if sport == 40000 else 17, 4, DIR_EGRESS, EP)
        bpfsys.update(fd, old[sport], CT_VAL.pack(time.monotonic_ns() + 60 * 10**9, 0, 5))
    before = sorted((c["src"], c["dst"], c["sport"], c["direction"]) for c in datapath.ct.entries(EP))
    reply = tr.packet(PEER, POD, tr.TCP, 443, 40000, tr.TCP_ACK)
    assert tr.run(datapath, "ingress", reply) == tr.TC_ACT_SHOT  # not found under its old key
    assert datapath.ct.migrate() == 2
    assert datapath.ct.migrate() == 0
    assert sorted((c["src"], c["dst"], c["sport"], c["direction"]) for c in datapath.ct.entries(EP)) == before
    assert all(c["translated"] and c["packets"] == 5 for c in datapath.ct.entries(EP))
    assert tr.run(datapath, "ingress", reply) == tr.TC_ACT_UNSPEC
    assert all(bpfsys.lookup(fd, key, CT_VAL.size) is None for key in old.values())


def test_non_tcp_lifetime_and_gc(make_datapath):
    dp = make_datapath(defines={"CT_LIFETIME_NONTCP": 1})
    dp.endpoints.set(1, EP, flags=FLAG_INGRESS_ENFORCED)
    for sport in range(100, 110):
        assert tr.run(dp, "egress", tr.packet(POD, PEER, tr.UDP, sport, 53)) == tr.TC_ACT_UNSPEC
    assert tr.run(dp, "egress", tr.packet(POD, PEER, tr.ICMP, 0, 77)) == tr.TC_ACT_UNSPEC  # echo id 77
    assert tr.run(dp, "ingress", tr.packet(PEER, POD, tr.ICMP, 1, 77)) == tr.TC_ACT_UNSPEC  # its reply
    assert tr.run(dp, "ingress", tr.packet(PEER, POD, tr.ICMP, 1, 78)) == tr.TC_ACT_SHOT  # another id
    assert len(dp.ct.entries(EP)) == 11
    assert dp.ct.gc() == 0
    time.sleep(1.1)
    assert dp.ct.gc() == 11
    assert dp.ct.entries() == []


def test_invalid_packets_drop_only_where_enforced(datapath):
    events = []
    datapath.open_events(events.append)
    datapath.endpoints.set(1, EP, identity=4000, flags=FLAG_INGRESS_ENFORCED)
    datapath.ipcache.set("10.1.0.0/16", 300)
    truncated = tr.ipv4(PEER, POD, tr.TCP, tr.tcp(1, 2)[:10])
    assert tr.run(datapath, "ingress", truncated) == tr.TC_ACT_SHOT
    assert tr.run(datapath, "egress", tr.ipv4(POD, PEER, tr.TCP, tr.tcp(1, 2)[:10])) == tr.TC_ACT_UNSPEC
    bad_version = bytearray(tr.packet(PEER, POD, tr.UDP, 1, 2))
    bad_version[14] = 0x55  # IPv5, IHL 5
    assert tr.run(datapath, "ingress", bytes(bad_version)) == tr.TC_ACT_SHOT
    datapath.poll_events(200)
    assert [e["reason"] for e in events] == ["invalid-packet", "invalid-packet"]
    assert (events[0]["src"], events[0]["srcIdentity"], events[0]["dstIdentity"]) == (PEER, 300, 4000)
    assert datapath.metrics.stats(EP)["ingress"]["drops"]["invalid-packet"] == 2


def test_arp_nd_and_other_ethertypes_pass_under_enforcement(datapath):
    datapath.endpoints.set(1, EP, flags=FLAG_INGRESS_ENFORCED | FLAG_EGRESS_ENFORCED)
    for direction in ("ingress", "egress"):
        assert tr.run(datapath, direction, tr.arp()) == tr.TC_ACT_UNSPEC
        for nd_type in range(133, 138):
            frame = tr.ipv6("fe80::1", "ff02::1", tr.ICMPV6, tr.icmp(nd_type))
            assert tr.run(datapath, direction, frame) == tr.TC_ACT_UNSPEC
        assert tr.run(datapath, direction, tr.ipv6("fe80::1", "ff02::1", tr.ICMPV6, tr.icmp(128, 5))) == tr.TC_ACT_SHOT
        assert tr.run(datapath, direction, tr.ether(0x88CC, b"\0" * 46)) == tr.TC_ACT_UNSPEC  # LLDP
        # MLD behind a hop-by-hop header with a router-alert option passes;
        # anything else behind one does not.
        for icmp_type, verdict in ((143, tr.TC_ACT_UNSPEC), (130, tr.TC_ACT_UNSPEC), (128, tr.TC_ACT_SHOT)):
            hop = bytes([tr.ICMPV6, 0, 5, 2, 0, 0, 1, 0])  # next ICMPv6, 8 bytes, router alert, PadN
            frame = tr.ipv6("fe80::1", "ff02::16", 0, hop + tr.icmp(icmp_type))
            assert tr.run(datapath, direction, frame) == verdict, icmp_type
    assert datapath.ct.entries() == []
