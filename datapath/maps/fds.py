"""The loaded maps' fds, lent to the map families under the datapath's lock.

`loader.Datapath` swaps the fds in on `load()` and out on `close()` while
holding the lock, and every map operation holds it for its duration (via
`MapFds.open()`): a concurrent `load()` or `close()` can therefore never
close an fd under an operation. Each swap starts a new generation, so that
what a family derived from a map's contents (the policy key index, the
backend ids) can tell when to derive it again.
"""

import threading
from contextlib import contextmanager

from datapath import bpfsys
from datapath.errors import DatapathError
from datapath.maps.fields import ALWAYS_FULL


class MapFds:
    def __init__(self, owner: str, lock: threading.Lock):
        self.lock = lock
        self.generation = 0
        self._owner = owner  # the bpf root, for messages
        self._fds: dict[str, int] | None = None

    def swap(self, fds: dict[str, int] | None) -> None:
        """Lend out `fds` (None: nothing loaded). The caller holds the lock."""
        self._fds = fds
        self.generation += 1

    @contextmanager
    def open(self):
        """Hold the lock and yield map name -> fd of the loaded maps."""
        with self.lock:
            if self._fds is None:
                raise DatapathError(f"datapath '{self._owner}' is not loaded")
            yield self._fds


class MapFamily:
    """Base of the family objects: their maps' shapes, the fds, and their
    entry counts (`pressure`)."""

    # map name -> (map_type, key_size, value_size, max_entries, map_flags)
    SHAPES: dict[str, tuple[int, int, int, int, int]] = {}

    def __init__(self, fds: MapFds):
        self._fds = fds

    def pressure(self) -> dict[str, tuple[int, int]]:
        """Map name -> (entries, max_entries) of the maps that can fill up,
        counted by walking the keys (the kernel keeps no count for hash
        maps). Arrays are left out: every entry of one is always there (a
        one-entry config array showed as 100% full)."""
        with self._fds.open() as fds:
            return {name: (len(bpfsys.keys(fds[name], shape[1])), shape[3])
                    for name, shape in self.SHAPES.items() if shape[0] not in ALWAYS_FULL}
