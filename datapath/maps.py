"""Byte encodings of the datapath maps, exactly as docs/policy.md fixes them.

Does: turn policy entries, CIDRs, ct entries, metrics keys and drop events
into the bytes `bpf/endpoint.c` reads and writes, and back; check entries
against the contract before anything is written. Does not: talk to the
kernel (`bpfsys` does) or hold state.

A policy entry is the contract's tuple
`(direction, identity, proto, port, port_plen, deny)`, e.g.
`("ingress", 256, 6, 8080, 16, False)`. Its LPM key covers 96 bits (ep_id,
dir, deny, pad, identity) for an L3 entry (proto 0), 104 for a protocol
with any port (port_plen 0) and 112 + port_plen for a port block.
"""

import ipaddress
import socket
import struct
from typing import NamedTuple

DIR_INGRESS = 1  # to the pod
DIR_EGRESS = 2  # from the pod
DIRECTIONS = {"ingress": DIR_INGRESS, "egress": DIR_EGRESS}
DIRECTION_NAMES = {v: k for k, v in DIRECTIONS.items()}

# endpoints flags
FLAG_INGRESS_ENFORCED = 1
FLAG_EGRESS_ENFORCED = 2
FLAGS_ALL = FLAG_INGRESS_ENFORCED | FLAG_EGRESS_ENFORCED

REASON_FORWARDED = 0
REASONS = {1: "policy-denied", 2: "policy-deny", 3: "invalid-packet", 4: "no-service-backend"}
EVENT_LB_XLATE = 100  # not a drop: a service translation (docs/services.md)
EVENT_LB_SOCK = 101  # the same by the socket hooks; `ifindex` holds the process id

IDENTITY_ANY = 0
IDENTITY_WORLD = 2

PROTO_NAMES = {1: "ICMP", 6: "TCP", 17: "UDP", 58: "ICMPv6", 132: "SCTP"}

# -- endpoints ----------------------------------------------------------------

ENDPOINT_KEY = struct.Struct("=I")
ENDPOINT_VAL = struct.Struct("=IIII")  # ep_id, identity, flags, pad

# -- metrics ------------------------------------------------------------------

METRICS_KEY = struct.Struct("=IBBH")  # ep_id, dir, reason, pad


def metrics_key(ep_id: int, direction: int, reason: int) -> bytes:
    return METRICS_KEY.pack(ep_id, direction, reason, 0)


# -- ipcache ------------------------------------------------------------------

IPCACHE_KEY = struct.Struct("=IB3x16s")  # prefixlen, family, pad, addr
IPCACHE_VAL = struct.Struct("=II")  # identity, pad


def ipcache_key(cidr: str) -> bytes:
    """Key of a CIDR ("10.0.0.0/8") or a single address ("10.0.0.1")."""
    try:
        net = ipaddress.ip_network(cidr, strict=True)
    except ValueError as exc:
        raise ValueError(f"invalid CIDR '{cidr}': {exc}") from None
    return IPCACHE_KEY.pack(32 + net.prefixlen, net.version, net.network_address.packed.ljust(16, b"\0"))


def ipcache_cidr(key: bytes) -> str:
    prefixlen, family, addr = IPCACHE_KEY.unpack(key)
    raw = addr[:4] if family == 4 else addr
    return str(ipaddress.ip_network((raw, prefixlen - 32)))


# -- policy -------------------------------------------------------------------

# prefixlen in host order (as the LPM trie wants it), then the matched
# data with its multi-byte fields in network order: ep_id, dir, deny, pad,
# identity, proto, pad, dport.
_PREFIX = struct.Struct("=I")
_POLICY_DATA = struct.Struct(">IBBHIBBH")
POLICY_VAL = struct.Struct("=Q")  # hits
POLICY_PREFIX_L3 = 96
POLICY_PREFIX_PROTO = 104
POLICY_PREFIX_PORT = 112
POLICY_KEY_SIZE = _PREFIX.size + _POLICY_DATA.size  # 20


class PolicyEntry(NamedTuple):
    direction: str  # "ingress" | "egress"
    identity: int  # 0 = any
    proto: int  # 0 = any (then port and port_plen are 0)
    port: int
    port_plen: int  # 0..16 leading bits of port that must match
    deny: bool


def policy_entry(entry) -> PolicyEntry:
    """Check a contract tuple; ValueError says what is wrong with it."""
    try:
        direction, identity, proto, port, port_plen, deny = entry
    except (TypeError, ValueError):
        raise ValueError(
            f"invalid policy entry {entry!r}: want (direction, identity, proto, port, port_plen, deny)") from None

    def bad(why: str) -> ValueError:
        return ValueError(f"invalid policy entry {tuple(entry)!r}: {why}")

    if direction not in DIRECTIONS:
        raise bad("direction must be 'ingress' or 'egress'")
    for name, value, top in (("identity", identity, 2**32), ("proto", proto, 256), ("port", port, 2**16),
                             ("port_plen", port_plen, 17)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < top:
            raise bad(f"{name} must be an integer in 0..{top - 1}")
    if not isinstance(deny, bool):
        raise bad("deny must be True or False")
    if proto == 0 and (port or port_plen):
        raise bad("an any-protocol entry (proto 0) has port 0 and port_plen 0")
    if port & ~(0xFFFF << (16 - port_plen)) & 0xFFFF:
        raise bad(f"port {port} is not the first port of a /{port_plen} block")
    return PolicyEntry(direction, identity, proto, port, port_plen, deny)


def policy_key(ep_id: int, entry: PolicyEntry) -> bytes:
    if entry.proto == 0:
        prefix = POLICY_PREFIX_L3
    elif entry.port_plen == 0:
        prefix = POLICY_PREFIX_PROTO
    else:
        prefix = POLICY_PREFIX_PORT + entry.port_plen
    return _PREFIX.pack(prefix) + _POLICY_DATA.pack(
        ep_id, DIRECTIONS[entry.direction], int(entry.deny), 0, entry.identity, entry.proto, 0, entry.port)


def policy_key_ep(key: bytes) -> int:
    """The endpoint id of a policy key, without decoding the rest."""
    return int.from_bytes(key[4:8], "big")


def policy_decode(key: bytes) -> tuple[int, PolicyEntry]:
    (prefix,) = _PREFIX.unpack_from(key)
    ep_id, direction, deny, _, identity, proto, _, port = _POLICY_DATA.unpack_from(key, 4)
    if prefix <= POLICY_PREFIX_L3:
        proto, port, plen = 0, 0, 0
    elif prefix <= POLICY_PREFIX_PORT:
        plen, port = 0, 0
    else:
        plen = prefix - POLICY_PREFIX_PORT
    return ep_id, PolicyEntry(DIRECTION_NAMES.get(direction, str(direction)), identity, proto, port, plen, bool(deny))


# -- ct -----------------------------------------------------------------------

# saddr, daddr, sport, dport (network order), proto, family, dir, pad, ep_id
CT_KEY = struct.Struct("=16s16s2s2sBBBxI")
CT_VAL = struct.Struct("=QIxxxxQ")  # expires (ns, CLOCK_MONOTONIC), flags, packets
CT_F_CLOSING = 1
CT_F_REVERSED = 2  # the key holds the reply's orientation: the first packet went the other way
CT_F_LB = 4  # translated per packet (replies are reverse-translated)
CT_F_CANON = 8  # keyed in canonical order (entries of older programs lack it)


def ct_swapped(saddr: bytes, daddr: bytes, sport: bytes, dport: bytes) -> bool:
    """endpoint.c's ct_swapped: is the source end after the destination end
    (addresses as four native-order u32, then ports as native u16)?"""
    return (_native(saddr), int.from_bytes(sport, "little")) > (_native(daddr), int.from_bytes(dport, "little"))


def _native(addr: bytes) -> tuple[int, ...]:
    return struct.unpack("=4I", addr)


def ct_canonical(key: bytes, flags: int) -> tuple[bytes, int]:
    """The key and flags endpoint.c's ct_create would have written for the
    first packet of this entry's connection (for entries of older programs,
    keyed as their first packet went)."""
    saddr, daddr, sport, dport, proto, family, direction, ep_id = CT_KEY.unpack(key)
    if ct_swapped(saddr, daddr, sport, dport):
        key = CT_KEY.pack(daddr, saddr, dport, sport, proto, family,
                          DIR_INGRESS if direction == DIR_EGRESS else DIR_EGRESS, ep_id)
        flags |= CT_F_REVERSED
    return key, flags | CT_F_CANON


def ct_key_ep(key: bytes) -> int:
    return int.from_bytes(key[40:44], "little")


def ct_decode(key: bytes, value: bytes, now_ns: int) -> dict:
    """A connection as its first packet went (src: who opened it)."""
    saddr, daddr, sport, dport, proto, family, direction, ep_id = CT_KEY.unpack(key)
    expires, flags, packets = CT_VAL.unpack(value)
    if flags & CT_F_REVERSED:
        saddr, daddr, sport, dport = daddr, saddr, dport, sport
        direction = DIR_INGRESS if direction == DIR_EGRESS else DIR_EGRESS
    return {
        "epID": ep_id,
        "direction": DIRECTION_NAMES.get(direction, str(direction)),
        "src": _address(family, saddr),
        "dst": _address(family, daddr),
        "sport": int.from_bytes(sport, "big"),
        "dport": int.from_bytes(dport, "big"),
        "proto": proto_name(proto),
        "expiresIn": round((expires - now_ns) / 1e9, 3),  # negative: expired
        "closing": bool(flags & CT_F_CLOSING),
        "translated": bool(flags & CT_F_LB),
        "packets": packets,
    }


def ct_expires(value: bytes) -> int:
    return CT_VAL.unpack(value)[0]


# -- drop events --------------------------------------------------------------

# time, ep_id, src identity, dst identity, saddr, daddr, sport, dport (host
# order), proto, family, dir, reason, ifindex, len, then for translation
# events the backend's port (host order), the service id and address.
EVENT = struct.Struct("=QIII16s16sHHBBBBIIHH16s")


def event_decode(data: bytes, ktime_to_wall: float) -> dict:
    (ktime, ep_id, src_id, dst_id, saddr, daddr, sport, dport, proto, family, direction, reason, ifindex,
     length, xport, svc_id, xaddr) = EVENT.unpack_from(data)
    if reason in (EVENT_LB_XLATE, EVENT_LB_SOCK):
        event = {
            "type": "lb",
            "path": "socket" if reason == EVENT_LB_SOCK else "packet",
            "time": ktime / 1e9 + ktime_to_wall,
            "epID": ep_id,
            "src": _address(family, saddr),
            "sport": sport,
            "frontend": _address(family, daddr),
            "frontendPort": dport,
            "backend": _address(family, xaddr),
            "backendPort": xport,
            "serviceID": svc_id,
            "proto": proto_name(proto),
            "ifindex": ifindex,
        }
        if reason == EVENT_LB_SOCK:  # connect()/sendmsg(): no source yet, a process
            del event["ifindex"], event["src"], event["sport"], event["epID"]
            event["pid"] = ifindex
        return event
    return {
        "time": ktime / 1e9 + ktime_to_wall,  # seconds since the epoch
        "epID": ep_id,
        "srcIdentity": src_id,
        "dstIdentity": dst_id,
        "src": _address(family, saddr),
        "dst": _address(family, daddr),
        "sport": sport,
        "dport": dport,
        "proto": proto_name(proto),
        "direction": DIRECTION_NAMES.get(direction, str(direction)),
        "reason": REASONS.get(reason, str(reason)),
        "ifindex": ifindex,
        "length": length,
    }


# -- helpers ------------------------------------------------------------------


def proto_name(proto: int) -> str:
    return PROTO_NAMES.get(proto, str(proto))


def _address(family: int, raw: bytes) -> str:
    if family == 4:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    return socket.inet_ntop(socket.AF_INET6, raw)
