"""Long operations (policy import, endpoint restore, ...) and their progress.

An operation is created by whoever starts the work (`Operations.start`),
advanced from the worker thread (`op.update(done, total)`), and read from
any thread: `GET /v1/operations[/ID]` answers while the work runs, which is
how the CLI shows progress for a request that is still waiting. A running
operation also logs its progress every LOG_SECONDS, so that work the API
cannot show (restore, before the socket listens) is visible in the log.
It does not cancel anything.
"""

import collections
import itertools
import re
import threading
import time

LOG_SECONDS = 2.0
KEEP_FINISHED = 20
_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class Operation:
    def __init__(self, op_id, kind, log=None):
        self.id = op_id
        self.kind = kind
        self.done = 0
        self.total = None
        self.phase = None
        self.started = time.time()
        self.finished = None
        self.error = None
        self._log = log
        self._logged = time.monotonic()

    def update(self, done, total=None, phase=None):
        self.done = done
        if total is not None:
            self.total = total
        if phase is not None:
            self.phase = phase
        now = time.monotonic()
        if self._log is not None and now - self._logged >= LOG_SECONDS:
            self._logged = now
            self._log.info("%s%s: %d of %s done", self.kind,
                           " (%s)" % self.phase if self.phase else "", done,
                           "?" if self.total is None else self.total)

    def view(self):
        end = self.finished or time.time()
        return {"id": self.id, "kind": self.kind, "phase": self.phase, "done": self.done,
                "total": self.total,
                "state": "running" if self.finished is None else
                ("failed" if self.error else "done"),
                "error": self.error, "startedAt": self.started,
                "seconds": round(end - self.started, 3)}


class Operations:
    def __init__(self, log=None):
        self._log = log
        self._lock = threading.Lock()
        self._ops = collections.OrderedDict()
        self._ids = itertools.count(1)

    def start(self, kind, op_id=None):
        """A new running operation; `op_id` lets a client name it to poll it."""
        if op_id is None or not _ID.fullmatch(op_id):
            op_id = "%s-%d" % (kind, next(self._ids))
        op = Operation(op_id, kind, self._log)
        with self._lock:
            self._ops.pop(op_id, None)
            self._ops[op_id] = op
            finished = [k for k, o in self._ops.items() if o.finished is not None]
            for k in finished[:max(0, len(finished) - KEEP_FINISHED)]:
                del self._ops[k]
        return op

    def finish(self, op, error=None):
        op.error = error
        op.finished = time.time()

    def run(self, kind, fn, op_id=None):
        """Call fn(op) as operation `kind`, marking it done or failed."""
        op = self.start(kind, op_id)
        try:
            result = fn(op)
        except BaseException as exc:
            self.finish(op, str(exc) or type(exc).__name__)
            raise
        self.finish(op)
        return result

    def get(self, op_id):
        with self._lock:
            op = self._ops.get(op_id)
        return op.view() if op else None

    def list(self):
        with self._lock:
            return [op.view() for op in self._ops.values()]

    def last(self, kind):
        with self._lock:
            ops = [op for op in self._ops.values() if op.kind == kind]
        return ops[-1].view() if ops else None
