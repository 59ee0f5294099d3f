"""One worker thread that applies every endpoint change in arrival order.

A bounded queue sits in front of it: when a burst of ADDs fills it, callers
wait for room (up to `wait` seconds) instead of being dropped; only a
caller that still finds no room gets `Busy` (CNI code 11, try again).
One writer keeps endpoint ids, maps and filters consistent without locks
spread through the datapath. Periodic jobs (`every`) run on a timer thread
of their own and submit their work to the worker.
"""

import queue
import threading
from concurrent.futures import Future

from agent.errors import Busy

_STOP = object()


class SerialWorker:
    def __init__(self, maxsize, log):
        self._queue = queue.Queue(maxsize=maxsize)
        self._log = log
        self._thread = threading.Thread(target=self._run, name="endpoint-worker", daemon=True)
        self._thread.start()

    def submit(self, fn, *args, wait=60.0):
        """Run fn(*args) on the worker; return its result or raise its error."""
        future = Future()
        try:
            self._queue.put((fn, args, future), timeout=wait)
        except queue.Full:
            raise Busy("agent queue is full (%d pending changes); try again"
                       % self._queue.maxsize) from None
        return future.result()

    def depth(self):
        return self._queue.qsize()

    def alive(self):
        return self._thread.is_alive()

    def _run(self):
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            fn, args, future = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # handed to the caller, who maps it
                future.set_exception(exc)
            del item, fn, args, future  # not kept alive while waiting for the next job

    def stop(self, timeout=10.0):
        """Finish what is queued, then stop."""
        self._queue.put(_STOP)
        self._thread.join(timeout)


def every(stop, seconds, name, job, log):
    """Run job() every `seconds` on a daemon thread until stop is set."""
    def loop():
        while not stop.wait(seconds):
            try:
                job()
            except Exception:
                log.exception("periodic job %s failed", name)
    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    return thread
