"""Service maps and the per-packet translation against the kernel.

BPF_PROG_TEST_RUN runs from_container/to_container on frames with correct
checksums; the frames the programs leave behind are checked byte by byte
(addresses, ports, IPv4 header and L4 checksums recomputed from scratch).
The map writes are checked for the order that keeps a service whole while
it changes, and for touching only the changed service.
"""

import ipaddress
import struct
import time

import pytest

from datapath import bpfsys
from datapath.maps import lb as lbmod
from tests.datapath.packets import TCP, TCP_ACK, TCP_SYN, UDP, ether

pytestmark = pytest.mark.kernel

EP, IDENT, LO = 7, 300, 1
POD, VIP, BACKEND = "10.240.0.5", "10.96.50.1", "10.241.0.9"
POD6, VIP6, BACKEND6 = "fd00:240::5", "fd00:96::50:1", "fd00:241::9"


def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def pseudo(src, dst, proto, length):
    s, d = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
    if len(s) == 4:
        return s + d + struct.pack("!BBH", 0, proto, length)
    return s + d + struct.pack("!IxxxB", length, proto)


def frame(src, dst, proto, sport, dport, flags=TCP_SYN, payload=b"hello", zero_udp_csum=False):
    if proto == TCP:
        l4 = struct.pack("!HHIIBBHHH", sport, dport, 1000, 0, 5 << 4, flags, 65535, 0, 0) + payload
        off = 16
    else:
        l4 = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
        off = 6
    if not zero_udp_csum:
        c = csum(pseudo(src, dst, proto, len(l4)) + l4)
        l4 = l4[:off] + struct.pack("!H", c) + l4[off + 2:]
    if ipaddress.ip_address(src).version == 4:
        hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0, 64, proto, 0,
                          ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed)
        hdr = hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]
        return ether(0x0800, hdr + l4)
    hdr = struct.pack("!IHBB16s16s", 6 << 28, len(l4), proto, 64, ipaddress.ip_address(src).packed,
                      ipaddress.ip_address(dst).packed)
    return ether(0x86DD, hdr + l4)


def parse(data):
    """(src, dst, sport, dport, proto, l4 checksum ok, ip checksum ok, l4 checksum)."""
    eth_type = struct.unpack("!H", data[12:14])[0]
    if eth_type == 0x0800:
        ip = data[14:34]
        proto, src, dst = ip[9], str(ipaddress.ip_address(ip[12:16])), str(ipaddress.ip_address(ip[16:20]))
        l4 = data[34:14 + struct.unpack("!H", ip[2:4])[0]]
        ip_ok = csum(ip) == 0
    else:
        ip = data[14:54]
        proto, src, dst = ip[6], str(ipaddress.ip_address(ip[8:24])), str(ipaddress.ip_address(ip[24:40]))
        l4 = data[54:54 + struct.unpack("!H", ip[4:6])[0]]
        ip_ok = True
    sport, dport = struct.unpack("!HH", l4[:4])
    field = struct.unpack("!H", l4[16:18] if proto == TCP else l4[6:8])[0]
    l4_ok = csum(pseudo(src, dst, proto, len(l4)) + l4) == 0 or (proto == UDP and field == 0)
    return src, dst, sport, dport, proto, l4_ok, ip_ok, field


def run(dp, program, data):
    result = dp.test_run(program, data, ifindex=LO)
    return result.verdict, result.frame


def service(frontend, backends, proto="tcp", sid=1, kind="ClusterIP"):
    address, _, port = frontend.rpartition(":")
    address = address.strip("[]")
    out = []
    for b in backends:
        a, _, p = b.rpartition(":")
        out.append({"address": a.strip("[]"), "port": int(p), "weight": 1})
    key = "%s/%s" % (frontend, proto)
    return {"key": key, "id": sid, "type": kind, "name": None, "backends": out,
            "frontend": {"address": address, "port": int(port), "protocol": proto}}


@pytest.fixture
def dp(datapath):
    datapath.endpoints.set(LO, EP, IDENT)
    return datapath


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("proto", [TCP, UDP], ids=["tcp", "udp"])
def test_dnat_and_reverse_keep_checksums_right(dp, proto, v6):
    pod, vip, backend = (POD6, VIP6, BACKEND6) if v6 else (POD, VIP, BACKEND)
    fe = "[%s]:80" % vip if v6 else "%s:80" % vip
    be = "[%s]:8080" % backend if v6 else "%s:8080" % backend
    dp.lb.upsert(service(fe, [be], "tcp" if proto == TCP else "udp"))
    verdict, out = run(dp, "from_container", frame(pod, vip, proto, 40000, 80))
    assert verdict == -1  # TC_ACT_UNSPEC: passed on
    assert parse(out)[:7] == (pod, backend, 40000, 8080, proto, True, True)
    # the next packet of the connection goes the same way
    assert parse(run(dp, "from_container", frame(pod, vip, proto, 40000, 80, TCP_ACK))[1])[1] == backend
    # the reply gets the frontend back as its source
    verdict, out = run(dp, "to_container", frame(backend, pod, proto, 8080, 40000, TCP_SYN | TCP_ACK))
    assert verdict == -1
    assert parse(out)[:7] == (vip, pod, 80, 40000, proto, True, True)


def test_udp_without_checksum_stays_without(dp):
    dp.lb.upsert(service("%s:53" % VIP, ["%s:5353" % BACKEND], "udp"))
    _, out = run(dp, "from_container", frame(POD, VIP, UDP, 40001, 53, zero_udp_csum=True))
    src, dst, sport, dport, _, _, ip_ok, field = parse(out)
    assert (dst, dport, ip_ok, field) == (BACKEND, 5353, True, 0)


def test_other_traffic_is_left_alone(dp):
    dp.lb.upsert(service("%s:80" % VIP, ["%s:8080" % BACKEND]))
    for data in (frame(POD, VIP, TCP, 40000, 81), frame(POD, VIP, UDP, 40000, 80),
                 frame(POD, "10.96.50.2", TCP, 40000, 80)):
        verdict, out = run(dp, "from_container", data)
        assert verdict == -1 and out == data


def test_no_backends_refuses_a_syn_with_a_rst(dp):
    dp.lb.upsert(service("%s:80" % VIP, []))
    data = frame(POD, VIP, TCP, 40000, 80, payload=b"")
    verdict, out = run(dp, "from_container", data)
    assert verdict == 7  # TC_ACT_REDIRECT: back into the pod
    src, dst, sport, dport, proto, l4_ok, ip_ok, _ = parse(out)
    assert (src, dst, sport, dport, l4_ok, ip_ok) == (VIP, POD, 80, 40000, True, True)
    seq, ack, _, flags = struct.unpack("!IIBB", out[38:48])
    assert (seq, ack, flags) == (0, 1001, 0x14)  # RST|ACK, acknowledging the SYN
    assert dp.metrics.stats(EP)["egress"]["drops"]["no-service-backend"] == 1
    # UDP to it: dropped
    assert run(dp, "from_container", frame(POD, VIP, UDP, 40000, 80))[0] == -1  # no UDP service
    dp.lb.upsert(service("%s:80" % VIP, [], "udp", sid=2))
    assert run(dp, "from_container", frame(POD, VIP, UDP, 40000, 80))[0] == 2  # TC_ACT_SHOT


def test_spread_over_weighted_slots(dp):
    svc = service("%s:80" % VIP, ["10.241.0.1:80", "10.241.0.2:80"])
    svc["backends"][1]["weight"] = 3
    dp.lb.upsert(svc)
    seen = {}
    for port in range(41000, 41400):
        dst = parse(run(dp, "from_container", frame(POD, VIP, TCP, port, 80))[1])[1]
        seen[dst] = seen.get(dst, 0) + 1
    # 1:3 over 400 connections: the light backend gets 100 +- 30 (5 sigma ~ 43)
    assert 57 < seen["10.241.0.1"] < 143, seen


class OrderChecker:
    """After every write to lb_services: slot 0 names only slots that exist,
    and every slot names a backend that exists."""

    def __init__(self, map_fd, monkeypatch, svc):
        self.fds = {name: map_fd(name) for name in ("lb_services", "lb_backends")}
        self.svc, self.writes, self.states = svc, [], 0
        for name in ("update", "delete"):
            real = getattr(bpfsys, name)
            monkeypatch.setattr(lbmod.bpfsys, name, self._wrap(real))

    def _wrap(self, real):
        def call(fd, key, *args):
            out = real(fd, key, *args)
            self.writes.append(key)
            self.check()
            return out
        return call

    def check(self):
        head = bpfsys.lookup(self.fds["lb_services"], lbmod.service_key(self.svc, 0), lbmod.LB_VAL.size)
        if head is None:
            return
        count = lbmod.LB_VAL.unpack(head)[1]
        for slot in range(1, count + 1):
            value = bpfsys.lookup(self.fds["lb_services"], lbmod.service_key(self.svc, slot), lbmod.LB_VAL.size)
            assert value is not None, "slot %d of %d missing" % (slot, count)
            bid = lbmod.LB_VAL.unpack(value)[0]
            assert bpfsys.lookup(self.fds["lb_backends"], bid.to_bytes(4, "little"), lbmod.LB_BACKEND.size)
        self.states += 1


def test_updates_never_break_the_service_and_touch_only_it(dp, map_fd, monkeypatch):
    other = service("10.96.50.2:80", ["10.241.0.1:80", "10.241.0.7:80"], sid=2)
    dp.lb.upsert(other)
    svc = service("%s:80" % VIP, ["10.241.0.%d:80" % i for i in range(1, 6)])
    dp.lb.upsert(svc)
    fds = {name: map_fd(name) for name in ("lb_services", "lb_backends")}
    before_other = {s: bpfsys.lookup(fds["lb_services"], lbmod.service_key(other, s), lbmod.LB_VAL.size)
                    for s in range(3)}
    checker = OrderChecker(map_fd, monkeypatch, svc)
    for backends in (["10.241.0.%d:80" % i for i in (2, 3, 8, 9)],  # shrink + replace
                     ["10.241.0.%d:80" % i for i in range(1, 10)],  # grow
                     ["10.241.0.9:80"], []):
        dp.lb.upsert(service("%s:80" % VIP, backends))
    assert checker.states > 10
    other_keys = {lbmod.service_key(other, s) for s in range(3)}
    assert not other_keys & set(checker.writes)  # the other service was not written
    assert {s: bpfsys.lookup(fds["lb_services"], lbmod.service_key(other, s), lbmod.LB_VAL.size)
            for s in range(3)} == before_other
    # backends only the changed service used are gone, shared ones stay
    entries = {e["frontend"]: e for e in dp.lb.entries()}
    assert entries["%s:80/tcp" % VIP]["backends"] == []
    assert sorted(entries["10.96.50.2:80/tcp"]["backends"]) == ["10.241.0.1:80", "10.241.0.7:80"]
    assert len(bpfsys.keys(fds["lb_backends"], 4)) == 2


def test_established_connection_keeps_its_backend_when_others_change(dp):
    dp.lb.upsert(service("%s:80" % VIP, ["10.241.0.1:80"]))
    assert parse(run(dp, "from_container", frame(POD, VIP, TCP, 42000, 80))[1])[1] == "10.241.0.1"
    dp.lb.upsert(service("%s:80" % VIP, ["10.241.0.2:80", "10.241.0.1:80", "10.241.0.3:80"]))
    for _ in range(20):
        data = frame(POD, VIP, TCP, 42000, 80, TCP_ACK)
        assert parse(run(dp, "from_container", data)[1])[1] == "10.241.0.1"
    # its backend removed: the connection is re-balanced onto one that exists
    dp.lb.upsert(service("%s:80" % VIP, ["10.241.0.2:80"]))
    assert parse(run(dp, "from_container", frame(POD, VIP, TCP, 42000, 80, TCP_ACK))[1])[1] == "10.241.0.2"


def test_sync_after_restart_keeps_ids_and_drops_strays(make_datapath, map_fd):
    first = make_datapath()
    keep = service("%s:80" % VIP, ["10.241.0.1:80", "10.241.0.2:80"])
    first.lb.upsert(keep)
    first.lb.upsert(service("10.96.50.3:80", ["10.241.0.3:80"], sid=3))
    ids = dict(bpfsys.items_batch(map_fd("lb_backends"), 4, lbmod.LB_BACKEND.size))
    first.close()
    again = make_datapath()  # a restarted agent: the maps are the pinned ones
    again.lb.sync([keep])
    assert [e["frontend"] for e in again.lb.entries()] == ["%s:80/tcp" % VIP]
    now = dict(bpfsys.items_batch(map_fd("lb_backends"), 4, lbmod.LB_BACKEND.size))
    assert now == {k: v for k, v in ids.items() if k in now} and len(now) == 2


def test_expired_translations_are_collected(make_datapath, map_fd):
    dp = make_datapath(defines={"CT_LIFETIME_NONTCP": "1"})
    dp.endpoints.set(LO, EP, IDENT)
    dp.lb.upsert(service("%s:53" % VIP, ["%s:5353" % BACKEND], "udp"))
    run(dp, "from_container", frame(POD, VIP, UDP, 40000, 53))
    fd = map_fd("lb_ct")
    assert len(bpfsys.keys(fd, lbmod.CT_KEY_SIZE)) == 2  # the forward and the reverse entry
    assert dp.lb.ct_gc() == 0
    time.sleep(1.2)
    assert dp.lb.ct_gc() == 2


def test_a_new_syn_on_a_recorded_tuple_restores_a_lost_reverse_entry(dp, map_fd):
    """A client reusing its port finds the forward entry: its SYN rewrites the
    reverse one, so replies are reverse-translated even if that entry went."""
    dp.lb.upsert(service("%s:80" % VIP, ["%s:8080" % BACKEND]))
    run(dp, "from_container", frame(POD, VIP, TCP, 41000, 80))
    fd = map_fd("lb_ct")
    reverse = [k for k in bpfsys.keys(fd, lbmod.CT_KEY_SIZE) if k[38] != lbmod.LB_CT_SVC]
    assert len(reverse) == 1
    assert bpfsys.delete(fd, reverse[0])
    # a reply now would not be translated back...
    assert parse(run(dp, "to_container", frame(BACKEND, POD, TCP, 8080, 41000, TCP_ACK))[1])[0] == BACKEND
    # ...until the client's next connection on the same port sends its SYN
    assert parse(run(dp, "from_container", frame(POD, VIP, TCP, 41000, 80))[1])[1] == BACKEND
    assert parse(run(dp, "to_container", frame(BACKEND, POD, TCP, 8080, 41000, TCP_SYN | TCP_ACK))[1])[0] == VIP


def test_gc_asks_the_map_before_removing_a_reverse_entry(dp, map_fd, monkeypatch):
    """The snapshot the collector reads can miss a forward entry created
    while it read; the reverse entry of such a connection must stay."""
    dp.lb.upsert(service("%s:80" % VIP, ["%s:8080" % BACKEND]))
    run(dp, "from_container", frame(POD, VIP, TCP, 41001, 80))
    real = bpfsys.items_batch

    def without_forward(fd, key_size, value_size, *a, **kw):
        return [(k, v) for k, v in real(fd, key_size, value_size, *a, **kw)
                if key_size != lbmod.CT_KEY_SIZE or k[38] != lbmod.LB_CT_SVC]

    monkeypatch.setattr(bpfsys, "items_batch", without_forward)
    assert dp.lb.ct_gc() == 0
    monkeypatch.undo()
    assert len(bpfsys.keys(map_fd("lb_ct"), lbmod.CT_KEY_SIZE)) == 2
