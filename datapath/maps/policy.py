"""The `policy` map (LPM trie): per endpoint, the allow and deny entries
the programs match a new connection against (docs/policy.md).

A policy entry is the contract's tuple
`(direction, identity, proto, port, port_plen, deny)`, e.g.
`("ingress", 256, 6, 8080, 16, False)`. Its LPM key covers 96 bits (ep_id,
dir, deny, pad, identity) for an L3 entry (proto 0), 104 for a protocol
with any port (port_plen 0) and 112 + port_plen for a port block.

Policy keys per endpoint are indexed in memory (built by one walk of the
trie on first use after each `load()`, then kept up to date by this
object's writes), because an LPM trie cannot be walked from a prefix:
clearing one endpoint's 1000 entries among 100,000 takes ~5 ms instead of
~300 ms. The programs never add or remove policy entries, so the index is
exact as long as this object is the only writer of the bpf root's policy
map (the agent is, by design); `entries()` still reads the map itself.

Updates are ordered so that every state the datapath sees meanwhile is at
most as permissive as both the old and the new policy: new deny entries
first, then removed allow entries, new allow entries, and removed deny
entries last (an entry both added and deleted is simply kept).
"""

import struct
from typing import NamedTuple

from datapath import bpfsys
from datapath.errors import DatapathError
from datapath.maps.fds import MapFamily
from datapath.maps.fields import DIRECTION_NAMES, DIRECTIONS, MAP_LPM_TRIE, NO_PREALLOC

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


class PolicyMap(MapFamily):
    SHAPES = {"policy": (MAP_LPM_TRIE, POLICY_KEY_SIZE, POLICY_VAL.size, 1048576, NO_PREALLOC)}

    def __init__(self, fds):
        super().__init__(fds)
        self._keys: dict[int, set[bytes]] | None = None  # ep_id -> its keys in the map
        self._generation = None  # of the fds the index was built from

    def update(self, ep_id: int, adds=(), deletes=()) -> None:
        """Add and delete the endpoint's entries (contract tuples).

        Every entry is checked before anything is written. Adding an entry
        that exists keeps it and its hit counter; deleting a missing one is
        fine. A kernel error (e.g. the map is full) raises DatapathError
        with the entries before it applied.
        """
        adds = [policy_entry(e) for e in adds]
        deletes = [policy_entry(e) for e in deletes]
        keep = set(adds)
        deletes = [e for e in dict.fromkeys(deletes) if e not in keep]
        zero = POLICY_VAL.pack(0)
        steps = (
            ([e for e in adds if e.deny], True),
            ([e for e in deletes if not e.deny], False),
            ([e for e in adds if not e.deny], True),
            ([e for e in deletes if e.deny], False),
        )
        with self._fds.open() as fds:
            fd = fds["policy"]
            index = self._index(fd).setdefault(ep_id, set())
            for entries, add in steps:
                for entry in entries:
                    key = policy_key(ep_id, entry)
                    try:
                        if add:
                            bpfsys.update(fd, key, zero, bpfsys.BPF_NOEXIST)
                            index.add(key)
                        else:
                            bpfsys.delete(fd, key)
                            index.discard(key)
                    except bpfsys.BpfError as exc:
                        raise DatapathError(f"failed to {'add' if add else 'delete'} policy entry "
                                            f"{tuple(entry)} of endpoint {ep_id}: {exc.strerror.lower()}") from exc

    def entries(self, ep_id: int) -> list[tuple[PolicyEntry, int]]:
        """The endpoint's entries with their hit counts (new connections
        each entry decided), sorted."""
        out = []
        with self._fds.open() as fds:
            fd = fds["policy"]
            for key in bpfsys.keys(fd, POLICY_KEY_SIZE):
                if policy_key_ep(key) != ep_id:
                    continue
                value = bpfsys.lookup(fd, key, POLICY_VAL.size)
                if value is not None:
                    out.append((policy_decode(key)[1], POLICY_VAL.unpack(value)[0]))
        return sorted(out)

    def clear(self, ep_id: int) -> int:
        """Remove all of the endpoint's entries; returns how many."""
        with self._fds.open() as fds:
            fd = fds["policy"]
            keys = self._index(fd).pop(ep_id, set())
            return sum(bpfsys.delete(fd, key) for key in keys)

    def pressure(self) -> dict[str, tuple[int, int]]:
        """Counted from the index: the trie holds up to a million keys."""
        with self._fds.open() as fds:
            count = sum(len(keys) for keys in self._index(fds["policy"]).values())
        return {"policy": (count, self.SHAPES["policy"][3])}

    def _index(self, fd: int) -> dict[int, set[bytes]]:
        # The caller holds the lock; every load() starts a new index.
        if self._keys is None or self._generation != self._fds.generation:
            index: dict[int, set[bytes]] = {}
            for key in bpfsys.keys(fd, POLICY_KEY_SIZE):
                index.setdefault(policy_key_ep(key), set()).add(key)
            self._keys, self._generation = index, self._fds.generation
        return self._keys
