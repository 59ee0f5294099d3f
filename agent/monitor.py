"""Fan-out of datapath events (drops) to `cilium-cni monitor` clients.

One poller thread (`pump_events`) drains the perf buffer into the hub; each subscriber has
a bounded queue so that a slow client loses events (counted) instead of
stalling the datapath reader or the agent's memory.
"""

import queue
import threading
import time


class Subscription:
    def __init__(self, kind, maxsize):
        self.kind = kind
        self.queue = queue.Queue(maxsize=maxsize)
        self.lost = 0

    def wants(self, event):
        return self.kind == "all" or event.get("type") == self.kind


class EventHub:
    def __init__(self, maxsize=4096):
        self._subs = set()
        self._lock = threading.Lock()
        self._maxsize = maxsize

    def subscribe(self, kind):
        sub = Subscription(kind, self._maxsize)
        with self._lock:
            self._subs.add(sub)
        return sub

    def unsubscribe(self, sub):
        with self._lock:
            self._subs.discard(sub)

    def publish(self, event):
        event.setdefault("timeText", time.strftime("%H:%M:%S", time.localtime()))
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            if not sub.wants(event):
                continue
            try:
                sub.queue.put_nowait(event)
            except queue.Full:
                sub.lost += 1

    def stream(self, kind, stop, heartbeat=1.0):
        """Yield events for one client until `stop` is set (or the client leaves)."""
        sub = self.subscribe(kind)
        try:
            while not stop.is_set():
                try:
                    yield sub.queue.get(timeout=heartbeat)
                except queue.Empty:
                    yield None  # lets the server notice a client that went away
        finally:
            self.unsubscribe(sub)


def pump_events(datapath, hub, stop, log):
    """Drain the datapath's perf buffer into the hub until stop is set."""
    def publish(event):
        event.setdefault("type", "drop")
        hub.publish(event)

    datapath.open_events(publish)
    while not stop.is_set():
        try:
            datapath.poll_events(200)
        except Exception:
            log.exception("reading datapath events failed")
            stop.wait(1.0)
