"""Drop and translation events from the `events` perf buffer: decoding and
delivery, for `Datapath`.

Does: decode a raw event (the C side's `struct drop_event`, bpf/lib/drop.h;
sock.c raises the same layout) into a dict, open bcc's per-CPU perf
readers on a loaded object's `events` map, hand each decoded event to the
subscriber, count lost events, and close the readers. Does not: own the
loaded object or its lock (`loader.Datapath.poll_events` serialises polls
against `load()`/`close()`).

The map is not pinned: each `load()` makes a new one, and programs read
their own. bpf_ktime_get_ns() is CLOCK_MONOTONIC; events carry wall-clock
seconds, converted with the offset between the two clocks at poll time.
"""

import ctypes
import struct
import time

from datapath.maps.fields import DIRECTION_NAMES, address, proto_name
from datapath.maps.metrics import REASONS

EVENT_LB_XLATE = 100  # not a drop: a service translation (docs/services.md)
EVENT_LB_SOCK = 101  # the same by the socket hooks; `ifindex` holds the process id

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
            "src": address(family, saddr),
            "sport": sport,
            "frontend": address(family, daddr),
            "frontendPort": dport,
            "backend": address(family, xaddr),
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
        "src": address(family, saddr),
        "dst": address(family, daddr),
        "sport": sport,
        "dport": dport,
        "proto": proto_name(proto),
        "direction": DIRECTION_NAMES.get(direction, str(direction)),
        "reason": REASONS.get(reason, str(reason)),
        "ifindex": ifindex,
        "length": length,
    }


PAGE_COUNT = 64  # per CPU


class EventSink:
    def __init__(self, callback):
        self.callback = callback
        self.lost = 0  # events the kernel dropped because the buffer was full
        self._delivered = 0
        self._errors: list[BaseException] = []
        self._offset = 0.0

    def open(self, bpf) -> None:
        self.close(bpf)
        bpf[b"events"].open_perf_buffer(self._raw, page_cnt=PAGE_COUNT, lost_cb=self._lost)

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
            raw = ctypes.string_at(data, min(size, EVENT.size))
            if len(raw) < EVENT.size:
                return
            self._delivered += 1
            self.callback(event_decode(raw, self._offset))
        except BaseException as exc:
            self._errors.append(exc)

    # Counted rather than left to bcc, which would print each loss to stderr.
    def _lost(self, count) -> None:
        self.lost += count
