"""Drop events from the `events` perf buffer, decoded for `Datapath`.

Does: open bcc's per-CPU perf readers on a loaded object's `events` map,
decode each raw event (`maps.event_decode`) and hand the dict to the
subscriber, count lost events, and close the readers. Does not: own the
loaded object or its lock (`loader.Datapath.poll_events` serialises polls
against `load()`/`close()`).

The map is not pinned: each `load()` makes a new one, and programs read
their own. bpf_ktime_get_ns() is CLOCK_MONOTONIC; events carry wall-clock
seconds, converted with the offset between the two clocks at poll time.
"""

import ctypes
import time

from datapath import maps


class EventSink:
    def __init__(self, callback, lost_callback=None, page_count: int = 64):
        if page_count <= 0 or page_count & (page_count - 1):
            raise ValueError(f"page_count must be a power of two, not {page_count}")
        self.callback = callback
        self.lost_callback = lost_callback
        self.page_count = page_count
        self.lost = 0
        self._delivered = 0
        self._errors: list[BaseException] = []
        self._offset = 0.0

    def open(self, bpf) -> None:
        self.close(bpf)
        bpf[b"events"].open_perf_buffer(self._raw, page_cnt=self.page_count, lost_cb=self._lost)

    @staticmethod
    def close(bpf) -> None:
        table = bpf[b"events"]
        # Deleting a CPU's slot frees its reader (bcc's own clean-up path).
        for cpu in list(table._open_key_fds):
            del table[cpu]

    def poll(self, bpf, timeout_ms: int) -> int:
        self._delivered = 0
        self._offset = time.time() - time.monotonic()
        bpf.perf_buffer_poll(timeout_ms)
        if self._errors:
            error, self._errors = self._errors[0], []
            raise error
        return self._delivered

    # Called by bcc from inside perf_buffer_poll(); an exception escaping a
    # ctypes callback would only be printed, so it is kept for poll().
    def _raw(self, cpu, data, size) -> None:
        try:
            raw = ctypes.string_at(data, min(size, maps.EVENT.size))
            if len(raw) < maps.EVENT.size:
                return
            self._delivered += 1
            self.callback(maps.event_decode(raw, self._offset))
        except BaseException as exc:
            self._errors.append(exc)

    def _lost(self, count) -> None:
        self.lost += count
        if self.lost_callback is not None:
            try:
                self.lost_callback(count)
            except BaseException as exc:
                self._errors.append(exc)
