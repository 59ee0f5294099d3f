"""The `metrics` map: per endpoint, direction and reason, packets and bytes
counted per CPU by the programs (reason 0: forwarded, else a drop reason).

Values are per-CPU: a lookup returns one (packets, bytes) pair per
possible CPU, summed here.
"""

import struct

from bcc.utils import get_possible_cpus

from datapath import bpfsys
from datapath.maps.fds import MapFamily
from datapath.maps.fields import DIRECTION_NAMES, DIRECTIONS, MAP_PERCPU_HASH, NO_PREALLOC

REASON_FORWARDED = 0
REASONS = {1: "policy-denied", 2: "policy-deny", 3: "invalid-packet", 4: "no-service-backend"}

METRICS_KEY = struct.Struct("=IBBH")  # ep_id, dir, reason, pad
METRICS_VAL = struct.Struct("=QQ")  # packets, bytes (per CPU; 16: no rounding to 8 needed)


def metrics_key(ep_id: int, direction: int, reason: int) -> bytes:
    return METRICS_KEY.pack(ep_id, direction, reason, 0)


class MetricsMap(MapFamily):
    # The key kept its size when its pad byte became `reason` (0 =
    # forwarded, what it always held), so counters pinned by the
    # counting-only datapath are re-used as they are.
    SHAPES = {"metrics": (MAP_PERCPU_HASH, METRICS_KEY.size, METRICS_VAL.size, 131072, NO_PREALLOC)}

    def __init__(self, fds):
        super().__init__(fds)
        self._value_size = METRICS_VAL.size * len(get_possible_cpus())

    def _sum(self, raw: bytes) -> tuple[int, int]:
        packets = nbytes = 0
        for p, b in METRICS_VAL.iter_unpack(raw):
            packets += p
            nbytes += b
        return packets, nbytes

    def stats(self, ep_id: int) -> dict[str, dict]:
        """Per direction, summed over CPUs: forwarded "packets" and "bytes",
        and "drops" {reason: packets} for every drop reason (0 if none)."""
        stats = {}
        with self._fds.open() as fds:
            for name, direction in DIRECTIONS.items():
                counts = {}
                for reason in (REASON_FORWARDED, *REASONS):
                    raw = bpfsys.lookup(fds["metrics"], metrics_key(ep_id, direction, reason), self._value_size)
                    counts[reason] = self._sum(raw) if raw is not None else (0, 0)
                stats[name] = {
                    "packets": counts[REASON_FORWARDED][0],
                    "bytes": counts[REASON_FORWARDED][1],
                    "drops": {REASONS[r]: counts[r][0] for r in REASONS},
                }
        return stats

    def entries(self, with_reason: bool = False) -> list[tuple[int, ...]]:
        """(endpoint id, direction) of every counter, each pair once; with
        `with_reason`, (endpoint id, direction, reason) of each."""
        with self._fds.open() as fds:
            keys = [METRICS_KEY.unpack(k)[:3] for k in bpfsys.keys(fds["metrics"], METRICS_KEY.size)]
        if with_reason:
            return keys
        return list(dict.fromkeys(k[:2] for k in keys))

    def totals(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(direction, reason) -> (packets, bytes) summed over endpoints and
        CPUs; reason "forwarded" or a drop reason; every pair present."""
        names = {REASON_FORWARDED: "forwarded", **REASONS}
        totals = {(d, r): [0, 0] for d in DIRECTIONS for r in names.values()}
        with self._fds.open() as fds:
            items = bpfsys.items_batch(fds["metrics"], METRICS_KEY.size, self._value_size)
        for key, raw in items:
            _, direction, reason, _ = METRICS_KEY.unpack(key)
            pair = (DIRECTION_NAMES.get(direction), names.get(reason))
            if pair in totals:
                packets, nbytes = self._sum(raw)
                totals[pair][0] += packets
                totals[pair][1] += nbytes
        return {k: (v[0], v[1]) for k, v in totals.items()}

    def clear(self, ep_id: int) -> None:
        """Remove the endpoint's counters. A packet in flight meanwhile may
        re-create one; `entries()` lets reconciliation find such leftovers."""
        with self._fds.open() as fds:
            for direction in DIRECTIONS.values():
                for reason in (REASON_FORWARDED, *REASONS):
                    bpfsys.delete(fds["metrics"], metrics_key(ep_id, direction, reason))
