"""An informer: a cache of one API resource kept current by list + watch.

The collection is listed, and watched from the list's resourceVersion with
bookmarks (which advance the resourceVersion while nothing of this
resource changes, so that a resume after a quiet hour is not too old).
A watch that ends or is cut resumes from the last resourceVersion seen,
without a re-list. When the server answers 410 Gone (the resourceVersion is
older than it keeps), the collection is listed again and compared with the
cache: objects that vanished while away are delivered as deletes, objects
whose resourceVersion did not change are not delivered at all, and an
object deleted and made again under the same name (a new uid) is a delete
then an add. Watch events that repeat what the cache holds are dropped, so
a handler sees each change once.

Changes go to `handler(kind, obj)` with kind "added", "modified" or
"deleted" (obj: the API's JSON as a dict; for a delete, its last state), in
resourceVersion order, through `submit(fn, *args)`: the caller's way of
running fn on a thread it chooses (the agent's `SerialWorker.submit`, which
waits); by default the informer's own thread. One call of fn carries the
changes of one list or one event batch, in order.

Failures (unreachable server, error answers) are retried after an
exponential back-off with jitter (`backoff`), reset once a connection
worked. `synced` is set once the first list was handed to `submit`;
`stats()` gives counters for status and metrics.
"""

import logging
import random
import threading
import time

from agent.k8s.client import Gone, K8sError

ADDED, MODIFIED, DELETED = "added", "modified", "deleted"


def _key(obj):
    meta = obj.get("metadata") or {}
    return meta.get("namespace") or "", meta.get("name") or ""


def _rv(obj):
    return (obj.get("metadata") or {}).get("resourceVersion")


def _uid(obj):
    return (obj.get("metadata") or {}).get("uid")


class Backoff:
    """Delays of min(cap, base * 2**n), each drawn in [half, whole] (jitter),
    so that many agents that lost the same server do not return together."""

    def __init__(self, base=0.2, cap=30.0, rand=random.random):
        self.base, self.cap, self._rand = base, cap, rand
        self.attempt = 0

    def next(self):
        whole = min(self.cap, self.base * (2 ** min(self.attempt, 30)))
        self.attempt += 1
        return whole * (0.5 + self._rand() / 2)

    def reset(self):
        self.attempt = 0


class Informer:
    """List + watch of `resource` on `conn` (agent.k8s.client.Connection)."""

    def __init__(self, conn, resource, handler, submit=None, log=None, backoff=None,
                 watch_timeout=300.0, page=500):
        self.resource = resource
        self._conn = conn
        self._handler = handler
        self._submit = submit or (lambda fn, *args: fn(*args))
        self._log = log or logging.getLogger("cilium-cni.k8s")
        self._backoff = backoff or Backoff()
        self._watch_timeout = watch_timeout
        self._page = page
        self._cache = {}
        self._lock = threading.Lock()     # the cache and the counters, read by other threads
        self._stop = threading.Event()
        self._watch = None
        self._thread = None
        self.synced = threading.Event()
        self.resource_version = None
        self.events = 0          # changes delivered
        self.relists = 0         # lists after the first (410 Gone)
        self.errors = 0
        self.handler_errors = 0
        self.last_error = None
        self.last_event_time = None
        self.synced_at = None

    # ---- the caller's side -----------------------------------------------------------------

    def start(self):
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name="k8s-informer-" + self.resource.plural)
        self._thread.start()
        return self

    def stop(self, timeout=10.0):
        """Stops the thread: an open watch is cut, a back-off is cut short."""
        self._stop.set()
        watch = self._watch
        if watch is not None:
            watch.cancel()
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def wait_synced(self, timeout=None):
        return self.synced.wait(timeout)

    def get(self, name, namespace=""):
        with self._lock:
            return self._cache.get((namespace or "", name))

    def objects(self):
        with self._lock:
            return list(self._cache.values())

    def stats(self):
        with self._lock:
            return {"resource": self.resource.plural, "synced": self.synced.is_set(),
                    "synced_at": self.synced_at, "resource_version": self.resource_version,
                    "objects": len(self._cache), "events": self.events,
                    "relists": self.relists, "errors": self.errors,
                    "handler_errors": self.handler_errors, "last_error": self.last_error,
                    "last_event_time": self.last_event_time}

    # ---- the informer's thread -------------------------------------------------------------

    def _run(self):
        while not self._stop.is_set():
            try:
                if self.resource_version is None:
                    self._list()
                    self._backoff.reset()
                if self._watch_once():
                    self._backoff.reset()
            except Gone as exc:
                # the watch (or a list page) is too old: list again at once
                self._log.info("k8s: %s: %s; listing again", self.resource.plural, exc)
                self.resource_version = None
            except K8sError as exc:
                self._failed(exc)
            except Exception as exc:  # a bug must not end the informer silently
                self._log.exception("k8s: %s: unexpected error", self.resource.plural)
                self._failed(exc)

    def _failed(self, exc):
        delay = self._backoff.next()
        with self._lock:
            self.errors += 1
            self.last_error = str(exc)
        self._log.warning("k8s: %s: %s; retrying in %.1f s", self.resource.plural, exc, delay)
        self._stop.wait(delay)

    def _list(self):
        rv, items = self._conn.list(self.resource, limit=self._page)
        changes = self._diff(items)
        first = not self.synced.is_set()
        with self._lock:
            if not first:
                self.relists += 1
        self._deliver(changes)
        self.resource_version = rv
        if first:
            with self._lock:
                self.synced_at = time.time()
            self.synced.set()
            self._log.info("k8s: %s: synced, %d object(s) at resourceVersion %s",
                           self.resource.plural, len(items), rv)
        else:
            self._log.info("k8s: %s: re-listed %d object(s), %d change(s)",
                           self.resource.plural, len(items), len(changes))

    def _diff(self, items):
        """The changes that make the cache equal to a full listing (applied)."""
        changes, seen = [], set()
        with self._lock:
            for obj in items:
                key = _key(obj)
                seen.add(key)
                old = self._cache.get(key)
                if old is None:
                    changes.append((ADDED, obj))
                elif _uid(old) != _uid(obj):
                    changes += [(DELETED, old), (ADDED, obj)]
                elif _rv(old) != _rv(obj):
                    changes.append((MODIFIED, obj))
                self._cache[key] = obj
            for key in sorted(set(self._cache) - seen):
                changes.append((DELETED, self._cache.pop(key)))
        return changes

    def _watch_once(self):
        """One watch until it ends; True when it delivered or ran its course
        (the connection worked), False when cut before anything came."""
        # spread over [t, 2t): agents that started together do not re-watch together
        timeout = max(1, round(self._watch_timeout * (1 + random.random())))
        watch = self._conn.watch(self.resource, self.resource_version, timeout)
        self._watch = watch
        if self._stop.is_set():  # stop() ran before self._watch was set
            return False
        worked = False
        for kind, obj in watch:
            if not worked:
                worked = True
                self._backoff.reset()  # the server answers: a later cut starts from short
            rv = _rv(obj)
            if kind == "BOOKMARK":
                self.resource_version = rv or self.resource_version
                continue
            changes = self._event(kind, obj)
            self._deliver(changes)
            self.resource_version = rv or self.resource_version
            if self._stop.is_set():
                break
        else:
            worked = True  # the server ended the watch (timeoutSeconds)
        self._watch = None
        return worked

    def _event(self, kind, obj):
        key = _key(obj)
        with self._lock:
            old = self._cache.get(key)
            if kind == "DELETED":
                if old is None:
                    return []
                del self._cache[key]
                return [(DELETED, obj)]
            if kind not in ("ADDED", "MODIFIED"):
                raise K8sError("watch %s: unknown event type %r" % (self.resource.plural, kind))
            self._cache[key] = obj
            if old is None:
                return [(ADDED, obj)]
            if _uid(old) != _uid(obj):
                return [(DELETED, old), (ADDED, obj)]
            if _rv(old) == _rv(obj):
                return []   # a repeat of what the cache holds
            return [(MODIFIED, obj)]

    def _deliver(self, changes):
        if not changes:
            return
        with self._lock:
            self.events += len(changes)
            self.last_event_time = time.time()
        self._submit(self._apply, changes)

    def _apply(self, changes):
        for kind, obj in changes:
            try:
                self._handler(kind, obj)
            except Exception as exc:
                with self._lock:
                    self.handler_errors += 1
                    self.last_error = "handler: %s" % exc
                self._log.exception("k8s: %s: handling %s %s/%s failed", self.resource.plural,
                                    kind, *_key(obj))
