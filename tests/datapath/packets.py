"""Crafted frames for BPF_PROG_TEST_RUN of the endpoint programs (tests).

Does: build Ethernet frames (ARP, IPv4, IPv6 with TCP, UDP, SCTP, ICMP,
ICMPv6 or any other protocol number) as bytes, and run a loaded program on
one (`run`, through `Datapath.test_run`). Does not: send anything on a
wire; the maps the program touches are the real ones.

How the device is chosen (Linux 6.18, net/bpf/test_run.c): for SCHED_CLS
test runs the kernel accepts a `struct __sk_buff` context whose only
non-zero fields are mark, priority, ifindex, cb, tstamp, wire_len,
gso_segs, gso_size and hwtstamp. `ifindex` is looked up in the caller's
netns and becomes skb->dev, so `skb->ifindex` in the program reports it;
an ifindex with no device fails with ENODEV, and 0 or 1 mean loopback.
Tests therefore key their `endpoints` entry by an existing device's
ifindex; 1 (lo) always exists and no filter of ours sits on it.

Checksums are filled in (IPv4 header) or left zero (L4): the programs do
not check them and nothing delivers these frames.
"""

import ipaddress
import struct

from datapath.maps.fields import DIRECTIONS

TC_ACT_UNSPEC = -1
TC_ACT_OK = 0
TC_ACT_SHOT = 2

PROGRAMS = {"egress": "from_container", "ingress": "to_container"}

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD

TCP, UDP, SCTP, ICMP, ICMPV6 = 6, 17, 132, 1, 58
TCP_FIN, TCP_SYN, TCP_RST, TCP_ACK = 0x01, 0x02, 0x04, 0x10

_POD_MAC = bytes.fromhex("02000000aa01")
_HOST_MAC = bytes.fromhex("02000000bb01")


def ether(ethertype: int, payload: bytes, src: bytes = _POD_MAC, dst: bytes = _HOST_MAC) -> bytes:
    return dst + src + struct.pack("!H", ethertype) + payload


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4(src: str, dst: str, proto: int, payload: bytes, frag_offset: int = 0, ttl: int = 64) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0x1234, frag_offset & 0x1FFF, ttl, proto, 0,
                         ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    header = header[:10] + struct.pack("!H", _csum(header)) + header[12:]
    return ether(ETH_P_IP, header + payload)


def ipv6(src: str, dst: str, next_header: int, payload: bytes, hop_limit: int = 64) -> bytes:
    header = struct.pack("!IHBB16s16s", 6 << 28, len(payload), next_header, hop_limit,
                         ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed)
    return ether(ETH_P_IPV6, header + payload)


def tcp(sport: int, dport: int, flags: int = TCP_SYN) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 65535, 0, 0)


def udp(sport: int, dport: int, payload: bytes = b"x") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def sctp(sport: int, dport: int) -> bytes:
    return struct.pack("!HHII", sport, dport, 0, 0)


def icmp(icmp_type: int, ident: int = 0, code: int = 0, seq: int = 1) -> bytes:
    """An ICMP or ICMPv6 message (same layout for echo): type, code, csum, id, seq."""
    return struct.pack("!BBHHH", icmp_type, code, 0, ident, seq) + b"ping"


def arp(sender: str = "10.0.0.1", target: str = "10.0.0.2") -> bytes:
    body = struct.pack("!HHBBH6s4s6s4s", 1, ETH_P_IP, 6, 4, 1, _POD_MAC, ipaddress.IPv4Address(sender).packed,
                       b"\0" * 6, ipaddress.IPv4Address(target).packed)
    return ether(ETH_P_ARP, body, dst=b"\xff" * 6)


def packet(src: str, dst: str, proto: int, sport: int = 0, dport: int = 0, tcp_flags: int = TCP_SYN) -> bytes:
    """A frame from `src` to `dst` (IPv4 or IPv6 by the addresses).

    For ICMP/ICMPv6 `dport` is the echo id of an echo request (`sport`
    chooses: 0 request, 1 reply); other protocols without ports get an
    8-byte payload of zeros.
    """
    v6 = ipaddress.ip_address(src).version == 6
    if proto == TCP:
        l4 = tcp(sport, dport, tcp_flags)
    elif proto == UDP:
        l4 = udp(sport, dport)
    elif proto == SCTP:
        l4 = sctp(sport, dport)
    elif proto in (ICMP, ICMPV6):
        if v6:
            l4 = icmp(129 if sport else 128, dport)
        else:
            l4 = icmp(0 if sport else 8, dport)
    else:
        l4 = b"\0" * 8
    return ipv6(src, dst, proto, l4) if v6 else ipv4(src, dst, proto, l4)


def run(datapath, direction: str, frame: bytes, ifindex: int = 1) -> int:
    """The verdict of the program for the pod's `direction` on `frame`."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be 'ingress' or 'egress', not {direction!r}")
    return datapath.test_run(PROGRAMS[direction], frame, ifindex=ifindex).verdict
