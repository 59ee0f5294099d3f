"""This node's keys in etcd: its lease, what it publishes, and identity GC.

- The lease: every key a node owns (its node entry, its pods' ipcache
  entries, its identity use keys, the GC leadership) is attached to it. A
  node that dies (kill -9, power gone) stops refreshing it, and etcd deletes
  all of them when the TTL runs out; every other node sees the deletes. The
  lease id is kept in the state dir: an agent restarted within the TTL
  (an upgrade) takes the same lease, and nothing flaps.
- The publisher: the keys this node wants, with their values. Writing is
  done by a thread of its own, retried with back-off while etcd is away,
  so an ADD never waits for etcd unless it needs a new identity. A lease
  that was lost anyway (etcd without quorum for longer than the TTL) is
  replaced, and every wanted key is written again under the new one.
- The identity collector: one node at a time (whoever holds the GC key
  under its lease) deletes identities that no node has used for the grace
  period, in a transaction that fails if a node started using one again.
"""

import os
import random
import threading
import time

from agent.kvstore import layout
from agent.kvstore.etcd import KvstoreError

LEASE_FILE = "kvstore-lease"
# The publisher waits this long after a key is wanted before it writes, so a
# burst of ADDs becomes a few transactions and the write does not compete
# with the ADD being answered (ADD etcd/sqlite 1.12 -> 1.05 measured with a
# longer hold, docs/benchmarks.md); propagation takes ~1 ms of a 1 s budget.
COALESCE_SECONDS = 0.015
PUTS_PER_TXN = 64  # etcd allows 128 operations per transaction


class Publisher:
    def __init__(self, etcd, state_dir, ttl, log):
        self._etcd = etcd
        self._path = os.path.join(state_dir, LEASE_FILE)
        self._ttl = ttl
        self._log = log
        self.lease = 0
        self.reused_lease = False
        self._cond = threading.Condition()
        self._want = {}      # key -> (value, guard)
        self._written = {}   # key -> value last written
        self._dirty = {}     # keys to write or delete, in the order they were wanted
        self._lease_lost = False
        self._stop = False
        self._keepalive = None
        self._thread = None

    # --- the lease ---

    def open_lease(self):
        """Re-use the lease of a previous run if it is still alive, else a
        new one. Raises KvstoreError while etcd does not answer."""
        old = _read_lease(self._path)
        if old and self._etcd.lease_ttl(old) > 0:
            self.lease, self.reused_lease = old, True
        else:
            self.lease, self.reused_lease = self._etcd.grant(self._ttl), False
            _write_lease(self._path, self.lease)
        self._keepalive = self._etcd.keep_alive(self.lease, max(1.0, self._ttl / 3.0),
                                                self._on_lease_lost)
        return self.lease

    def _on_lease_lost(self):
        with self._cond:
            self._lease_lost = True
            self._cond.notify()

    def _renew_lease(self):
        self._log.warning("kvstore: lease %x expired (etcd unreachable for longer than its "
                          "TTL of %d s); taking a new one and writing %d key(s) again",
                          self.lease, self._ttl, len(self._want))
        self.lease = self._etcd.grant(self._ttl)
        _write_lease(self._path, self.lease)
        self._keepalive = self._etcd.keep_alive(self.lease, max(1.0, self._ttl / 3.0),
                                                self._on_lease_lost)
        with self._cond:
            self._lease_lost = False
            self._written.clear()
            self._dirty.update(dict.fromkeys(self._want))

    # --- wanted keys ---

    def want(self, key, value, written=False, guard=None):
        """Keep `key` = value under the lease. `guard()` -> (key, create
        revision) or None: write only while that key is that one."""
        with self._cond:
            self._want[key] = (value, guard)
            if written:
                self._written[key] = value
                self._dirty.pop(key, None)
            elif self._written.get(key) != value:
                self._dirty[key] = None
                self._cond.notify()

    def unwant(self, key):
        with self._cond:
            if self._want.pop(key, None) is not None or key in self._written:
                self._dirty[key] = None
                self._cond.notify()

    def reassert(self, key, value):
        """`key` now holds `value` in etcd (None: deleted). If it is a key
        of ours and someone else changed it, write ours again; returns True
        then. Our keys are ours: a foreign writer cannot take a pod's
        address or drop this node from the cluster."""
        with self._cond:
            wanted = self._want.get(key)
            if wanted is None or wanted[0] == value:
                return False
            self._written.pop(key, None)
            self._dirty[key] = None
            self._cond.notify()
            return True

    def wanted(self):
        with self._cond:
            return dict((k, v) for k, (v, _) in self._want.items())

    def pending(self):
        with self._cond:
            return len(self._dirty)

    def flush(self, timeout):
        """Wait until every wanted key is written (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._dirty and time.monotonic() < deadline:
                self._cond.wait(0.05)
            return not self._dirty

    def start(self):
        self._thread = threading.Thread(target=self._run, name="kvstore-publish", daemon=True)
        self._thread.start()

    def stop(self):
        with self._cond:
            self._stop = True
            self._cond.notify()
        if self._keepalive is not None:
            self._keepalive.cancel()
        if self._thread is not None:
            self._thread.join(5.0)

    def _run(self):
        backoff = 0.1
        while True:
            with self._cond:
                while not self._dirty and not self._lease_lost and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                lost = self._lease_lost
            if not lost:
                time.sleep(COALESCE_SECONDS)
            with self._cond:
                batch = list(self._dirty)[:256]
            try:
                if lost:
                    self._renew_lease()
                    continue
                self._write_batch(batch)
                backoff = 0.1
            except KvstoreError as exc:
                self._log.debug("kvstore: %d key(s) not written yet: %s", len(batch), exc)
                time.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, 5.0)
            with self._cond:
                self._cond.notify_all()

    def _write_batch(self, keys):
        """Plain puts share transactions; guarded puts and deletes (each
        with its own condition) go one by one."""
        plain, single = [], []
        with self._cond:
            for key in keys:
                wanted = self._want.get(key)
                (plain if wanted is not None and wanted[1] is None else single).append(
                    (key, wanted[0] if wanted else None))
        for start in range(0, len(plain), PUTS_PER_TXN):
            part = plain[start:start + PUTS_PER_TXN]
            self._etcd.txn([], [self._etcd.op_put(k, v, lease=self.lease) for k, v in part])
            with self._cond:
                for key, value in part:
                    if self._want.get(key, (None,))[0] == value:
                        self._written[key] = value
                        self._dirty.pop(key, None)
        for key, _ in single:
            self._write(key)

    def _write(self, key):
        with self._cond:
            wanted = self._want.get(key)
            old = self._written.get(key)
        if wanted is None:
            if old is not None:
                # Only our own value: the key may belong to another node by now.
                self._etcd.txn([self._etcd.when_value(key, old)], [self._etcd.op_delete(key)])
            with self._cond:
                if key not in self._want:
                    self._written.pop(key, None)
                    self._dirty.pop(key, None)
            return
        value, guard = wanted
        where = guard() if guard else None
        compare = [self._etcd.when_created(*where)] if where and where[1] else []
        ok, _ = self._etcd.txn(compare, [self._etcd.op_put(key, value, lease=self.lease)])
        if not ok:
            self._log.debug("kvstore: %s not written: %s changed; retried", key, where[0])
            raise KvstoreError("guard %s changed" % where[0])
        with self._cond:
            if self._want.get(key, (None,))[0] == value:
                self._written[key] = value
                self._dirty.pop(key, None)

    def prune(self):
        """Delete keys left under our lease by a previous run that nobody
        wants now (a pod deleted while the agent was down)."""
        attached = self._etcd.lease_keys(self.lease)
        wanted = self.wanted()
        stale = [k for k in attached if k not in wanted]
        for key in stale:
            self._etcd.delete(key)
        return len(stale)


def _read_lease(path):
    try:
        with open(path) as f:
            return int(f.read().strip(), 16)
    except (OSError, ValueError):
        return 0


def _write_lease(path, lease):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("%x\n" % lease)
    os.replace(tmp, path)


class IdentityCollector:
    """Deletes identities no node uses, while this node holds the GC key."""

    def __init__(self, etcd, keys, node, publisher, grace_seconds, log, clock=time.monotonic):
        self._etcd = etcd
        self._keys = keys
        self._node = node
        self._publisher = publisher
        self._grace = grace_seconds
        self._log = log
        self._clock = clock
        self._unused_since = {}  # number -> when first seen without users
        self.leader = False

    def _lead(self):
        value = layout.encode({"node": self._node})
        ok, replies = self._etcd.txn(
            [self._etcd.when_absent(self._keys.gc_leader)],
            [self._etcd.op_put(self._keys.gc_leader, value, lease=self._publisher.lease)],
            [self._etcd.op_get(self._keys.gc_leader)])
        if ok:
            return True
        held = replies[0]
        return bool(held) and held[0].value == value and held[0].lease == self._publisher.lease

    def run_once(self):
        """One pass; returns the numbers deleted. Raises KvstoreError."""
        self.leader = self._lead()
        if not self.leader:
            self._unused_since.clear()
            return []
        _, items = self._etcd.list(self._keys.identities)
        ids, used = {}, set()
        for item in items:
            tail = item.key[len(self._keys.identities):]
            if tail.startswith("id/"):
                try:
                    number, text = layout.read_identity(tail[3:], item.value)
                except ValueError:
                    continue  # not ours to judge; the watchers log it
                ids[number] = (text, item.create_revision)
            elif tail.startswith("users/"):
                try:
                    used.add(layout.read_user(tail[6:])[0])
                except ValueError:
                    continue
        now = self._clock()
        for number in list(self._unused_since):
            if number in used or number not in ids:
                del self._unused_since[number]
        deleted = []
        for number, (text, created) in ids.items():
            if number in used:
                continue
            since = self._unused_since.setdefault(number, now)
            if now - since < self._grace:
                continue
            ok, _ = self._etcd.txn(
                [self._etcd.when_none_under(self._keys.users_of(number)),
                 self._etcd.when_created(self._keys.id_key(number), created)],
                [self._etcd.op_delete(self._keys.id_key(number)),
                 self._etcd.op_delete(self._keys.labels_key(text))])
            del self._unused_since[number]
            if ok:
                deleted.append(number)
        if deleted:
            self._log.info("kvstore: released identities no node uses: %s",
                           ", ".join(map(str, deleted)))
        return deleted
