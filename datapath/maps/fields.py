"""Values several maps (and the drop events) share: directions, protocol
names, addresses as the maps hold them, and the map types families
declare their shapes with."""

import ipaddress
import socket

DIR_INGRESS = 1  # to the pod
DIR_EGRESS = 2  # from the pod
DIRECTIONS = {"ingress": DIR_INGRESS, "egress": DIR_EGRESS}
DIRECTION_NAMES = {v: k for k, v in DIRECTIONS.items()}

PROTO_NAMES = {1: "ICMP", 6: "TCP", 17: "UDP", 58: "ICMPv6", 132: "SCTP"}

# enum bpf_map_type values (linux/bpf.h) and BPF_F_NO_PREALLOC, for the
# (map_type, key_size, value_size, max_entries, map_flags) shape each
# family declares and the loader checks a pinned map against.
MAP_HASH = 1
MAP_ARRAY = 2
MAP_PERCPU_HASH = 5
MAP_PERCPU_ARRAY = 6
MAP_LRU_HASH = 9
MAP_LPM_TRIE = 11
NO_PREALLOC = 1
# Arrays hold all their entries from creation on: never under pressure.
ALWAYS_FULL = frozenset({MAP_ARRAY, MAP_PERCPU_ARRAY})


def proto_name(proto: int) -> str:
    return PROTO_NAMES.get(proto, str(proto))


def address(family: int, raw: bytes) -> str:
    """Text of a map's 16-byte address field (IPv4 in the first 4 bytes)."""
    if family == 4:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    return socket.inet_ntop(socket.AF_INET6, raw)


def address_bytes(text: str) -> tuple[int, bytes]:
    """(family, 16-byte address field) of an address's text."""
    ip = ipaddress.ip_address(text)
    return ip.version, ip.packed.ljust(16, b"\0")
