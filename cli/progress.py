"""Progress of long CLI operations, on stderr.

Shown only when stderr is a terminal or `--progress` is given, and never
on stdout, so `-o json` output stays one JSON document. On a terminal the
line redraws itself; otherwise (`--progress` into a file or pipe) each
change is one line, at most every `min_interval` seconds.

`run_with_progress(call, poll, progress)` runs a blocking agent request in
a thread and polls the agent's view of the operation meanwhile: the agent
does the work, the CLI only watches (`GET /v1/operations/ID`, see
agent/operations.py). Any command can use it, e.g.:

    op = new_operation_id()
    out = run_with_progress(lambda: call_agent(sock, "POST", "/v1/x?operation=" + op, body),
                            operation_poller(sock, op), Progress("x", enabled))
"""

import os
import sys
import threading
import time


def wanted(flag, output="table", stream=None):
    """--progress forces it; otherwise only on a terminal and not for -o json."""
    stream = stream or sys.stderr
    return bool(flag) or (output != "json" and stream.isatty())


def new_operation_id():
    return "cli-%d-%d" % (os.getpid(), time.monotonic_ns() % 10**9)


class Progress:
    def __init__(self, label, enabled, stream=None, min_interval=0.2):
        self.label = label
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.min_interval = min_interval
        self.started = time.monotonic()
        self._tty = enabled and self.stream.isatty()
        self._last = None
        self._shown_at = 0.0

    def text(self, done, total, phase=None):
        elapsed = time.monotonic() - self.started
        label = "%s: %s" % (self.label, phase) if phase else self.label + ":"
        if total:
            return "%s %d/%d (%d%%) %.1fs" % (label, done, total, 100 * done // total, elapsed)
        return "%s %d %.1fs" % (label, done, elapsed)

    def update(self, done, total=None, phase=None, force=False):
        if not self.enabled or (done, total, phase) == self._last:
            return
        now = time.monotonic()
        if not force and now - self._shown_at < self.min_interval:
            return
        self._last, self._shown_at = (done, total, phase), now
        if self._tty:
            self.stream.write("\r\033[K" + self.text(done, total, phase))
        else:
            self.stream.write(self.text(done, total, phase) + "\n")
        self.stream.flush()

    def close(self):
        if self.enabled and self._tty and self._last is not None:
            self.stream.write("\n")
            self.stream.flush()


def operation_poller(socket_path, op_id):
    """poll() -> (done, total, phase) of the agent's operation, or None until it exists."""
    from cni.client import AgentClient

    client = AgentClient(socket_path, timeout=5.0)

    def poll():
        try:
            status, body = client.request("GET", "/v1/operations/%s" % op_id)
        except Exception:
            return None
        if status != 200 or not isinstance(body, dict):
            return None
        return body.get("done", 0), body.get("total"), body.get("phase")

    return poll


def run_with_progress(call, poll, progress, interval=0.1):
    """call() in a thread; poll() shown through `progress` until it returns."""
    if not progress.enabled:
        return call()
    box = {}

    def work():
        try:
            box["result"] = call()
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=work, name="request", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(interval)
        state = poll()
        if state is not None:
            progress.update(*state)
    state = poll()
    if state is not None and "error" not in box:
        progress.update(*state, force=True)  # the final state, however soon it came
    progress.close()
    if "error" in box:
        raise box["error"]
    return box["result"]
