"""The agent's log: text or JSON lines, pod fields on every line about a pod,
and a bounded ring of recent errors for `cilium-cni status`.

A line about a pod is logged with `extra=pod_fields(endpoint_or_key)`; the
formatter then adds `containerID`, `ifname` and, when the runtime told us,
`podNamespace`/`podName`. Text lines carry them as `key=value` after the
message, JSON lines as keys, so `grep containerID=abc` and `jq
'select(.containerID=="abc")'` both find everything about one pod.
It does not rotate the agent's file: a service manager (journald,
logrotate with copytruncate, the kubelet's container logs) owns that.
"""

import collections
import json
import logging
import os
import threading
import time

LOGGER = "cilium-cni-agent"
POD_FIELDS = ("containerID", "ifname", "podNamespace", "podName")
ERROR_RING_SIZE = 50


def pod_fields(ep=None, key=None):
    """The pod fields of an endpoint (or endpoint request), or of a key 'cid:ifname'."""
    out = {}
    if key:
        cid, _, ifname = key.partition(":")
        out = {"containerID": cid, "ifname": ifname}
    if isinstance(ep, dict):
        for field in ("containerID", "ifname"):
            if ep.get(field):
                out[field] = ep[field]
        k8s = ep.get("k8s") if isinstance(ep.get("k8s"), dict) else {}
        if k8s.get("namespace"):
            out["podNamespace"] = k8s["namespace"]
        if k8s.get("podName"):
            out["podName"] = k8s["podName"]
    return out


def escaped(text):
    """Text from a client (a path, a header) as it may be logged: anything
    but printable ASCII backslash-escaped, so that a byte that is no UTF-8
    can neither break the log's encoding nor pass for another character."""
    return str(text).encode("ascii", "backslashreplace").decode("ascii")


def _writable(line):
    """A line every handler can write: a lone surrogate (from JSON such as
    "\\udc80" in a request) would make the stream's encoder fail, losing the
    line and printing a traceback."""
    return line.encode("utf-8", "backslashreplace").decode("utf-8")


def _stamp(record):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + \
        ".%03dZ" % int(record.msecs)


class TextFormatter(logging.Formatter):
    def format(self, record):
        line = "%s %s %s" % (_stamp(record), record.levelname.lower(), record.getMessage())
        fields = " ".join("%s=%s" % (f, getattr(record, f)) for f in POD_FIELDS
                          if getattr(record, f, None))
        if fields:
            line += " " + fields
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return _writable(line)


class JsonFormatter(logging.Formatter):
    def format(self, record):
        out = {"time": _stamp(record), "level": record.levelname.lower(),
               "msg": record.getMessage()}
        for f in POD_FIELDS:
            if getattr(record, f, None):
                out[f] = getattr(record, f)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)  # ASCII: a surrogate is written as its \\u escape


class ErrorRing(logging.Handler):
    """The last ERROR_RING_SIZE errors (and warnings), newest last."""

    def __init__(self, size=ERROR_RING_SIZE):
        super().__init__(logging.WARNING)
        self._items = collections.deque(maxlen=size)
        self._ring_lock = threading.Lock()

    def emit(self, record):
        item = {"time": record.created, "level": record.levelname.lower(),
                "msg": _writable(record.getMessage())}
        item.update({f: _writable(str(getattr(record, f))) for f in POD_FIELDS
                     if getattr(record, f, None)})
        with self._ring_lock:
            self._items.append(item)

    def recent(self, limit=10):
        with self._ring_lock:
            return list(self._items)[-limit:]


def setup(path, level, fmt="text"):
    """The agent's logger, writing to `path` ('' = stderr); returns (logger, ring)."""
    log = logging.getLogger(LOGGER)
    log.setLevel(getattr(logging, level.upper()))
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    log.propagate = False
    if path:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        handler = logging.FileHandler(path)
    else:
        handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    log.addHandler(handler)
    ring = ErrorRing()
    log.addHandler(ring)
    return log, ring
