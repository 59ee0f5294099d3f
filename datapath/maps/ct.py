"""The `ct` map (LRU hash): the connections the programs let through, one
entry per endpoint and connection, keyed in canonical order (whichever
end sorts first), so that a packet and its reply find it with one lookup.

Expired entries stay until `gc()` removes them (or the LRU evicts them);
the programs treat them as misses.
"""

import struct
import time

from datapath import bpfsys
from datapath.maps.fds import MapFamily
from datapath.maps.fields import DIR_EGRESS, DIR_INGRESS, DIRECTION_NAMES, MAP_LRU_HASH, address, proto_name

# saddr, daddr, sport, dport (network order), proto, family, dir, pad, ep_id
CT_KEY = struct.Struct("=16s16s2s2sBBBxI")
CT_VAL = struct.Struct("=QIxxxxQ")  # expires (ns, CLOCK_MONOTONIC), flags, packets
CT_F_CLOSING = 1
CT_F_REVERSED = 2  # the key holds the reply's orientation: the first packet went the other way
CT_F_LB = 4  # translated per packet (replies are reverse-translated)
CT_F_CANON = 8  # keyed in canonical order (entries of older programs lack it)


def ct_swapped(saddr: bytes, daddr: bytes, sport: bytes, dport: bytes) -> bool:
    """conntrack.h's ct_swapped: is the source end after the destination end
    (addresses as four native-order u32, then ports as native u16)?"""
    return (_native(saddr), int.from_bytes(sport, "little")) > (_native(daddr), int.from_bytes(dport, "little"))


def _native(addr: bytes) -> tuple[int, ...]:
    return struct.unpack("=4I", addr)


def ct_canonical(key: bytes, flags: int) -> tuple[bytes, int]:
    """The key and flags conntrack.h's ct_create would have written for the
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
        "src": address(family, saddr),
        "dst": address(family, daddr),
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


class CtMap(MapFamily):
    # LRU: a full table evicts the least recently used connection instead
    # of refusing new ones.
    SHAPES = {"ct": (MAP_LRU_HASH, CT_KEY.size, CT_VAL.size, 131072, 0)}

    def _items(self, fd: int) -> list[tuple[bytes, bytes]]:
        return bpfsys.items_batch(fd, CT_KEY.size, CT_VAL.size)

    def entries(self, ep_id: int | None = None) -> list[dict]:
        """Connections (of one endpoint, or all), expired ones included
        (negative "expiresIn") until `gc()` removes them."""
        with self._fds.open() as fds:
            items = self._items(fds["ct"])
        now = time.monotonic_ns()
        return [ct_decode(k, v, now) for k, v in items if ep_id is None or ct_key_ep(k) == ep_id]

    def gc(self) -> int:
        """Remove expired connections; returns how many.

        Each expired entry is read again right before its delete, so a
        connection revived by a packet meanwhile is kept; one revived
        between that read and the delete (microseconds) only costs its next
        packet a new verdict.
        """
        with self._fds.open() as fds:
            fd = fds["ct"]
            now = time.monotonic_ns()
            removed = 0
            for key, value in self._items(fd):
                if ct_expires(value) > now:
                    continue
                current = bpfsys.lookup(fd, key, CT_VAL.size)
                if current is not None and ct_expires(current) <= time.monotonic_ns():
                    removed += bpfsys.delete(fd, key)
            return removed

    def migrate(self) -> int:
        """Rewrite the connections that programs of an older version keyed
        as their packet went (no CT_F_CANON) into the canonical keys the
        current programs look up, so that established connections outlive
        an agent upgrade; returns how many. TCP and UDP ones are marked as
        possibly translated: older programs reverse-translated every reply,
        and this keeps that for them. Run after the current programs are
        attached (older ones would add more such entries)."""
        with self._fds.open() as fds:
            fd = fds["ct"]
            moved = 0
            for key, value in self._items(fd):
                expires, flags, packets = CT_VAL.unpack(value)
                if flags & CT_F_CANON:
                    continue
                if CT_KEY.unpack(key)[4] in (6, 17):
                    flags |= CT_F_LB
                canon, flags = ct_canonical(key, flags)
                if canon != key:
                    # a packet since the upgrade may have made the entry anew: it wins
                    bpfsys.update(fd, canon, CT_VAL.pack(expires, flags, packets), bpfsys.BPF_NOEXIST)
                    bpfsys.delete(fd, key)
                else:
                    bpfsys.update(fd, key, CT_VAL.pack(expires, flags, packets), bpfsys.BPF_EXIST)
                moved += 1
            return moved

    def flush(self, ep_id: int | None = None) -> int:
        """Remove the endpoint's connections (all with None); returns how
        many. Their next packets get a new verdict (e.g. after a policy
        change that should cut existing connections)."""
        with self._fds.open() as fds:
            fd = fds["ct"]
            return sum(bpfsys.delete(fd, k) for k, _ in self._items(fd) if ep_id is None or ct_key_ep(k) == ep_id)
