"""Keeping the agent in step with etcd: one list, then one watch.

The whole prefix is listed at one revision R and watched from R+1 on a
single stream (`Etcd.watch` resumes it after a lost connection from the
revision after the last one delivered). A mirror of every key's value
turns both into changes: a list (the first one, or the re-list after the
watch's start revision was compacted) is compared with the mirror, so keys
deleted while the watch was away are applied as deletes and unchanged keys
are not applied at all; a watch event whose value is what the mirror holds
is dropped. Changes go to the owner of each part (`handlers`, by key
prefix) in revision order, on the agent's worker thread, as
`(kind, tail, value, create_revision)` where tail is the key after the
part's prefix.
"""

import queue
import threading
import time

from agent.kvstore.etcd import COMPACTED, KvstoreError, drain


class Mirror:
    """key -> (value, create revision) of everything seen under the prefix."""

    def __init__(self):
        self._values = {}

    def diff(self, items):
        """A full listing -> the changes that make the mirror equal to it."""
        seen, changes = set(), []
        for item in items:
            seen.add(item.key)
            if self._values.get(item.key, (None,))[0] != item.value:
                changes.append(("put", item.key, item.value, item.create_revision))
        for key in sorted(set(self._values) - seen):
            changes.append(("delete", key, b"", 0))
        self.apply(changes)
        return changes

    def events(self, events):
        changes = []
        for ev in events:
            if ev.kind == "delete":
                if ev.key in self._values:
                    changes.append(("delete", ev.key, b"", 0))
            elif self._values.get(ev.key, (None,))[0] != ev.value:
                changes.append(("put", ev.key, ev.value, ev.create_revision))
        self.apply(changes)
        return changes

    def apply(self, changes):
        for kind, key, value, created in changes:
            if kind == "delete":
                self._values.pop(key, None)
            else:
                self._values[key] = (value, created)

    def keys(self):
        return list(self._values)

    def __len__(self):
        return len(self._values)


class Sync:
    """List + watch of `root`, dispatching to handlers on `submit`."""

    def __init__(self, etcd, root, handlers, submit, log, observe=None):
        self._etcd = etcd
        self._root = root
        self._handlers = handlers  # [(prefix, fn(changes))], most specific first
        self._submit = submit      # runs fn(*args) on the worker and waits
        self._observe = observe    # observe(changes) before they are routed
        self._log = log
        self._mirror = Mirror()
        self._sink = queue.Queue()
        self._watch = None
        self._stop = threading.Event()
        self._thread = None
        self.revision = 0
        self.synced_at = None
        self.relists = 0
        self.events = 0
        self.skipped = 0

    def keys(self):
        return self._mirror.keys()

    def list_once(self):
        """The first listing (or a re-list); raises KvstoreError."""
        revision, items = self._etcd.list(self._root)
        changes = self._mirror.diff(items)
        self._dispatch(changes)
        self.revision = revision
        self.synced_at = time.time()
        return len(items)

    def start_watch(self):
        self._watch = self._etcd.watch(self._root, self.revision + 1, self._sink)
        self._thread = threading.Thread(target=self._run, name="kvstore-watch", daemon=True)
        self._thread.start()

    def stop(self):
        self._stop.set()
        if self._watch is not None:
            self._watch.cancel()
        if self._thread is not None:
            self._thread.join(5.0)

    def _run(self):
        while not self._stop.is_set():
            got = drain(self._sink, 0.5)
            if got == COMPACTED:
                self._relist()
                continue
            if not got:
                continue
            changes = self._mirror.events(got)
            self.revision = max(self.revision, got[-1].mod_revision)
            self.events += len(got)
            try:
                self._dispatch(changes)
            except Exception:
                self._log.exception("kvstore: applying %d change(s) failed", len(changes))

    def _relist(self):
        """The watch's revision was compacted: list again, apply the
        difference (deletes included), watch from the new revision."""
        self.relists += 1
        self._watch.cancel()
        while not self._stop.is_set():
            try:
                count = self.list_once()
                break
            except KvstoreError as exc:
                self._log.warning("kvstore: re-list after compaction failed: %s", exc)
                self._stop.wait(1.0)
        else:
            return
        self._log.info("kvstore: watch revision was compacted; re-listed %d key(s) at "
                       "revision %d", count, self.revision)
        self._sink = queue.Queue()
        self._watch = self._etcd.watch(self._root, self.revision + 1, self._sink)

    def _dispatch(self, changes):
        if not changes:
            return
        if self._observe is not None:
            self._observe(changes)
        routed = [[] for _ in self._handlers]
        for kind, key, value, created in changes:
            for i, (prefix, _) in enumerate(self._handlers):
                if key.startswith(prefix):
                    routed[i].append((kind, key[len(prefix):], value, created))
                    break
            else:
                self.skipped += 1
        for (prefix, fn), part in zip(self._handlers, routed, strict=True):
            if part:
                try:  # one part failing must not lose the others
                    self._submit(fn, part)
                except Exception:
                    self._log.exception("kvstore: applying %d change(s) under %s failed",
                                        len(part), prefix)
