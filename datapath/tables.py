"""Reading and writing the pinned maps: the map half of `Datapath`.

Does: the endpoint, ipcache, policy, ct and metrics operations of
`loader.Datapath` (a mixin: the class owns the lock and the loaded object),
with keys and values encoded by `maps` and written by `bpfsys`. Does not:
compile, pin or attach anything, or decide policy.

Every call holds the Datapath's lock for its duration: a concurrent
`load()` or `close()` could otherwise close the map fds under it.

Policy keys per endpoint are indexed in memory (built by one walk of the
trie on first use after `load()`, then kept up to date by this object's
writes), because an LPM trie cannot be walked from a prefix: clearing one
endpoint's 1000 entries among 100,000 takes ~5 ms instead of ~300 ms. The
programs never add or remove policy entries, so the index is exact as long
as this object is the only writer of the bpf root's policy map (the agent
is, by design); `policy_entries()` still reads the map itself.

Policy updates are ordered so that every state the datapath sees meanwhile
is at most as permissive as both the old and the new policy: new deny
entries first, then removed allow entries, new allow entries, and removed
deny entries last (an entry both added and deleted is simply kept).
"""

import time

from datapath import bpfsys, maps
from datapath.errors import DatapathError
from datapath.maps import DIRECTIONS, REASONS, PolicyEntry


class Tables:
    # -- endpoints ----------------------------------------------------------

    def set_endpoint(self, host_ifindex: int, ep_id: int, identity: int = 0, flags: int = 0) -> None:
        """Map the host veth to the endpoint; `flags` says which directions
        are enforced (FLAG_INGRESS_ENFORCED | FLAG_EGRESS_ENFORCED)."""
        if not 0 < ep_id < 2**32:
            raise ValueError(f"invalid endpoint id {ep_id}: 0 is reserved for unknown devices")
        if not 0 <= identity < 2**32:
            raise ValueError(f"invalid identity {identity}")
        if flags & ~maps.FLAGS_ALL or flags < 0:
            raise ValueError(f"invalid endpoint flags {flags:#x}")
        with self._lock:
            fd = self._require_loaded().map_fds["endpoints"]
            bpfsys.update(fd, maps.ENDPOINT_KEY.pack(host_ifindex), maps.ENDPOINT_VAL.pack(ep_id, identity, flags, 0))

    def remove_endpoint(self, host_ifindex: int, ep_id: int) -> None:
        """Forget the endpoint's device entry, counters, policy and connections.

        The device entry is removed only while it still names `ep_id`: an
        ifindex re-used by a newer endpoint keeps its entry. A packet in
        flight during removal may re-create a counter; `metrics_entries()`
        lets reconciliation find such leftovers.
        """
        with self._lock:
            fds = self._require_loaded().map_fds
            key = maps.ENDPOINT_KEY.pack(host_ifindex)
            value = bpfsys.lookup(fds["endpoints"], key, maps.ENDPOINT_VAL.size)
            if value is not None and maps.ENDPOINT_VAL.unpack(value)[0] == ep_id:
                bpfsys.delete(fds["endpoints"], key)
            for direction in DIRECTIONS.values():
                for reason in (maps.REASON_FORWARDED, *REASONS):
                    bpfsys.delete(fds["metrics"], maps.metrics_key(ep_id, direction, reason))
            self._policy_clear(fds["policy"], ep_id)
            self._ct_flush(fds["ct"], ep_id)

    def endpoint_entries(self) -> dict[int, int]:
        """Host ifindex -> endpoint id, as the datapath sees it."""
        return {ifindex: value[0] for ifindex, value in self.endpoint_infos().items()}

    def endpoint_infos(self) -> dict[int, tuple[int, int, int]]:
        """Host ifindex -> (endpoint id, identity, flags)."""
        with self._lock:
            table = self._require_loaded().bpf[b"endpoints"]
            return {key.value: (leaf.ep_id, leaf.identity, leaf.flags) for key, leaf in table.items()}

    # -- metrics --------------------------------------------------------------

    def endpoint_stats(self, ep_id: int) -> dict[str, dict]:
        """Per direction, summed over CPUs: forwarded "packets" and "bytes",
        and "drops" {reason: packets} for every drop reason (0 if none)."""
        with self._lock:
            metrics = self._require_loaded().bpf[b"metrics"]
            stats = {}
            for name, direction in DIRECTIONS.items():
                counts = {}
                for reason in (maps.REASON_FORWARDED, *REASONS):
                    try:
                        per_cpu = metrics.getvalue(metrics.Key(ep_id, direction, reason))
                    except KeyError:
                        per_cpu = []
                    counts[reason] = (sum(v.packets for v in per_cpu), sum(v.bytes for v in per_cpu))
                stats[name] = {
                    "packets": counts[maps.REASON_FORWARDED][0],
                    "bytes": counts[maps.REASON_FORWARDED][1],
                    "drops": {REASONS[r]: counts[r][0] for r in REASONS},
                }
            return stats

    def metrics_entries(self, with_reason: bool = False) -> list[tuple[int, ...]]:
        """(endpoint id, direction) of every counter, each pair once; with
        `with_reason`, (endpoint id, direction, reason) of each."""
        with self._lock:
            table = self._require_loaded().bpf[b"metrics"]
            keys = [(key.ep_id, key.dir, key.reason) for key in table.keys()]
        if with_reason:
            return keys
        return list(dict.fromkeys(k[:2] for k in keys))

    def metrics_totals(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(direction, reason) -> (packets, bytes) summed over endpoints and
        CPUs; reason "forwarded" or a drop reason; every pair present."""
        names = {maps.REASON_FORWARDED: "forwarded", **REASONS}
        totals = {(d, r): [0, 0] for d in DIRECTIONS for r in names.values()}
        direction_names = {v: k for k, v in DIRECTIONS.items()}
        with self._lock:
            table = self._require_loaded().bpf[b"metrics"]
            for key, per_cpu in table.items():
                pair = (direction_names.get(key.dir), names.get(key.reason))
                if pair in totals:
                    totals[pair][0] += sum(v.packets for v in per_cpu)
                    totals[pair][1] += sum(v.bytes for v in per_cpu)
        return {k: (v[0], v[1]) for k, v in totals.items()}

    # -- map pressure -----------------------------------------------------------

    def map_pressure(self) -> dict[str, tuple[int, int]]:
        """Map name -> (entries, max_entries) for every pinned map.

        Counted by walking the keys (the kernel keeps no count for hash
        maps); the policy map's count comes from the in-memory index.
        """
        out = {}
        with self._lock:
            fds = self._require_loaded().map_fds
            for name, shape in self.MAP_SHAPES.items():
                fd = fds.get(name)
                if fd is None:
                    continue
                if name == "policy":
                    count = sum(len(keys) for keys in self._policy_index(fd).values())
                else:
                    count = len(bpfsys.keys(fd, shape[1]))
                out[name] = (count, shape[3])
        return out

    # -- ipcache --------------------------------------------------------------

    def ipcache_set(self, cidr: str, identity: int) -> None:
        """Traffic from/to `cidr` (longest prefix wins) has `identity`."""
        if not 0 <= identity < 2**32:
            raise ValueError(f"invalid identity {identity}")
        key = maps.ipcache_key(cidr)
        with self._lock:
            try:
                bpfsys.update(self._require_loaded().map_fds["ipcache"], key, maps.IPCACHE_VAL.pack(identity, 0))
            except bpfsys.BpfError as exc:
                raise DatapathError(f"failed to set ipcache entry {cidr}: {exc.strerror.lower()}") from exc

    def ipcache_delete(self, cidr: str) -> bool:
        """Remove the entry of exactly `cidr`; False if there was none."""
        key = maps.ipcache_key(cidr)
        with self._lock:
            return bpfsys.delete(self._require_loaded().map_fds["ipcache"], key)

    def ipcache_entries(self) -> dict[str, int]:
        with self._lock:
            fd = self._require_loaded().map_fds["ipcache"]
            out = {}
            for key in bpfsys.keys(fd, maps.IPCACHE_KEY.size):
                value = bpfsys.lookup(fd, key, maps.IPCACHE_VAL.size)
                if value is not None:
                    out[maps.ipcache_cidr(key)] = maps.IPCACHE_VAL.unpack(value)[0]
            return out

    # -- policy ---------------------------------------------------------------

    def policy_update(self, ep_id: int, adds=(), deletes=()) -> None:
        """Add and delete the endpoint's entries (contract tuples).

        Every entry is checked before anything is written. Adding an entry
        that exists keeps it and its hit counter; deleting a missing one is
        fine. A kernel error (e.g. the map is full) raises DatapathError
        with the entries before it applied.
        """
        adds = [maps.policy_entry(e) for e in adds]
        deletes = [maps.policy_entry(e) for e in deletes]
        keep = set(adds)
        deletes = [e for e in dict.fromkeys(deletes) if e not in keep]
        zero = maps.POLICY_VAL.pack(0)
        steps = (
            ([e for e in adds if e.deny], True),
            ([e for e in deletes if not e.deny], False),
            ([e for e in adds if not e.deny], True),
            ([e for e in deletes if e.deny], False),
        )
        with self._lock:
            fd = self._require_loaded().map_fds["policy"]
            index = self._policy_index(fd).setdefault(ep_id, set())
            for entries, add in steps:
                for entry in entries:
                    key = maps.policy_key(ep_id, entry)
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

    def policy_entries(self, ep_id: int) -> list[tuple[PolicyEntry, int]]:
        """The endpoint's entries with their hit counts (new connections
        each entry decided), sorted."""
        with self._lock:
            fd = self._require_loaded().map_fds["policy"]
            out = []
            for key in bpfsys.keys(fd, maps.POLICY_KEY_SIZE):
                if maps.policy_key_ep(key) != ep_id:
                    continue
                value = bpfsys.lookup(fd, key, maps.POLICY_VAL.size)
                if value is not None:
                    out.append((maps.policy_decode(key)[1], maps.POLICY_VAL.unpack(value)[0]))
        return sorted(out)

    def policy_clear(self, ep_id: int) -> int:
        """Remove all of the endpoint's entries; returns how many."""
        with self._lock:
            return self._policy_clear(self._require_loaded().map_fds["policy"], ep_id)

    def _policy_clear(self, fd: int, ep_id: int) -> int:
        keys = self._policy_index(fd).pop(ep_id, set())
        return sum(bpfsys.delete(fd, key) for key in keys)

    def _policy_index(self, fd: int) -> dict[int, set[bytes]]:
        # Caller holds the lock; `load()` resets the index.
        if self._policy_keys is None:
            index: dict[int, set[bytes]] = {}
            for key in bpfsys.keys(fd, maps.POLICY_KEY_SIZE):
                index.setdefault(maps.policy_key_ep(key), set()).add(key)
            self._policy_keys = index
        return self._policy_keys

    # -- connection tracking ----------------------------------------------------

    def ct_entries(self, ep_id: int | None = None) -> list[dict]:
        """Connections (of one endpoint, or all), expired ones included
        (negative "expiresIn") until `ct_gc()` removes them."""
        with self._lock:
            fd = self._require_loaded().map_fds["ct"]
            items = bpfsys.items_batch(fd, maps.CT_KEY.size, maps.CT_VAL.size)
        now = time.monotonic_ns()
        return [maps.ct_decode(k, v, now) for k, v in items if ep_id is None or maps.ct_key_ep(k) == ep_id]

    def ct_gc(self) -> int:
        """Remove expired connections; returns how many.

        Each expired entry is read again right before its delete, so a
        connection revived by a packet meanwhile is kept; one revived
        between that read and the delete (microseconds) only costs its next
        packet a new verdict.
        """
        with self._lock:
            fd = self._require_loaded().map_fds["ct"]
            now = time.monotonic_ns()
            removed = 0
            for key, value in bpfsys.items_batch(fd, maps.CT_KEY.size, maps.CT_VAL.size):
                if maps.ct_expires(value) > now:
                    continue
                current = bpfsys.lookup(fd, key, maps.CT_VAL.size)
                if current is not None and maps.ct_expires(current) <= time.monotonic_ns():
                    removed += bpfsys.delete(fd, key)
            return removed

    def ct_migrate(self) -> int:
        """Rewrite the connections that programs of an older version keyed
        as their packet went (no CT_F_CANON) into the canonical keys the
        current programs look up, so that established connections outlive
        an agent upgrade; returns how many. TCP and UDP ones are marked as
        possibly translated: older programs reverse-translated every reply,
        and this keeps that for them. Run after the current programs are
        attached (older ones would add more such entries)."""
        with self._lock:
            fd = self._require_loaded().map_fds["ct"]
            moved = 0
            for key, value in bpfsys.items_batch(fd, maps.CT_KEY.size, maps.CT_VAL.size):
                expires, flags, packets = maps.CT_VAL.unpack(value)
                if flags & maps.CT_F_CANON:
                    continue
                if maps.CT_KEY.unpack(key)[4] in (6, 17):
                    flags |= maps.CT_F_LB
                canon, flags = maps.ct_canonical(key, flags)
                if canon != key:
                    # a packet since the upgrade may have made the entry anew: it wins
                    bpfsys.update(fd, canon, maps.CT_VAL.pack(expires, flags, packets), bpfsys.BPF_NOEXIST)
                    bpfsys.delete(fd, key)
                else:
                    bpfsys.update(fd, key, maps.CT_VAL.pack(expires, flags, packets), bpfsys.BPF_EXIST)
                moved += 1
            return moved

    def ct_flush(self, ep_id: int | None = None) -> int:
        """Remove the endpoint's connections (all with None); returns how
        many. Their next packets get a new verdict (e.g. after a policy
        change that should cut existing connections)."""
        with self._lock:
            return self._ct_flush(self._require_loaded().map_fds["ct"], ep_id)

    @staticmethod
    def _ct_flush(fd: int, ep_id: int | None) -> int:
        items = bpfsys.items_batch(fd, maps.CT_KEY.size, maps.CT_VAL.size)
        return sum(bpfsys.delete(fd, k) for k, _ in items if ep_id is None or maps.ct_key_ep(k) == ep_id)
