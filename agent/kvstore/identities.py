"""Identities shared by every node of the cluster, allocated in etcd.

Same calls as `agent.identity.IdentityAllocator` (acquire, release,
expire, all, listing), so `agent.enforcement` does not know which one it
has. Endpoint label sets get cluster-wide numbers; CIDR identities stay
node-local (the local allocator), as in Cilium.

- A label set this node already knows (from its list/watch of etcd, or its
  own allocations) is answered from memory: an ADD needs no etcd round
  trip, and works while etcd has no quorum. The node's `users` key for it
  is written by the publisher (retried until etcd takes it).
- A new label set: one transaction creates `id/<N>`, `labels/<TEXT>` and
  this node's `users/<N>/<node>` only if neither of the first two exists.
  If it fails, the other side's answer comes back in the same round trip:
  someone allocated this label set (take their number) or number N (try
  the next). Two nodes racing end with one number.
- Releasing: when this node's last user is gone for the grace period, it
  drops its `users` key. The identity itself is deleted by the garbage
  collector (`agent.kvstore.node`, one node at a time) once no node uses it.
"""

import threading
import time

from agent import labels as lbl
from agent.errors import KvstoreUnavailable
from agent.identity import CIDR_FIRST, ENDPOINT_FIRST, ENDPOINT_LAST, RESERVED, IdentityExhausted
from agent.kvstore import layout
from agent.kvstore.etcd import KvstoreError

ATTEMPTS = 16


class ClusterIdentities:
    def __init__(self, etcd, keys, node, publisher, local, grace_seconds=300.0,
                 clock=time.monotonic, log=None):
        self._etcd = etcd
        self._keys = keys            # layout.Layout
        self._node = node
        self._publisher = publisher  # agent.kvstore.node.Publisher
        self._local = local          # IdentityAllocator: CIDR identities
        self._grace = grace_seconds
        self._clock = clock
        self._log = log
        self._lock = threading.Lock()
        self._by_labels = {}
        self._by_id = {}
        self._created = {}  # number -> create revision of its id key
        self._refs = {}
        self._unused_since = {}
        self._next = ENDPOINT_FIRST
        self._taken = set()  # numbers whose id key holds a value we cannot read

    # --- the allocator's calls ---

    def acquire(self, labels_text, cidr=False):
        if cidr:
            return self._local.acquire(labels_text, cidr=True)
        with self._lock:
            number = self._by_labels.get(labels_text)
            created, written = number is None, False
            if created:
                number, written = self._allocate(labels_text)
            if self._refs.get(number, 0) == 0 and number not in self._unused_since:
                self._use(number, written=written)
            self._refs[number] = self._refs.get(number, 0) + 1
            self._unused_since.pop(number, None)
            return number, created

    def release(self, number):
        if number >= CIDR_FIRST:
            return self._local.release(number)
        with self._lock:
            left = self._refs.get(number, 0) - 1
            if left > 0:
                self._refs[number] = left
                return
            self._refs.pop(number, None)
            self._unused_since[number] = self._clock()

    def expire(self):
        """Drop this node's use of identities unused for the grace period.
        Returns the local (CIDR) identities forgotten; cluster identities
        leave the caches when their key is deleted (`apply`)."""
        now = self._clock()
        with self._lock:
            for number, since in list(self._unused_since.items()):
                if now - since >= self._grace:
                    del self._unused_since[number]
                    self._publisher.unwant(self._keys.user_key(number, self._node))
        return self._local.expire()

    def all(self):
        with self._lock:
            out = dict(self._by_id)
        out.update({n: t for n, t in self._local.all().items() if n >= CIDR_FIRST})
        out.update(RESERVED)
        return out

    def listing(self):
        with self._lock:
            rows = [{"id": n, "labels": text, "references": self._refs.get(n, 0),
                     "reserved": False} for n, text in self._by_id.items()]
        rows += [r for r in self._local.listing() if r["id"] >= CIDR_FIRST or r["reserved"]]
        return sorted(rows, key=lambda r: r["id"])

    def used(self):
        """Numbers this node holds a users key for (in use or in grace)."""
        with self._lock:
            return set(self._refs) | set(self._unused_since)

    # --- etcd ---

    def _use(self, number, written):
        key = self._keys.user_key(number, self._node)
        id_key = self._keys.id_key(number)
        # Written only while the identity is the one this node knows: a use
        # key must not keep a number alive that was collected and reused.
        self._publisher.want(key, layout.encode({}), written=written,
                             guard=lambda: (id_key, self._created.get(number)))

    def _allocate(self, text):
        """A number for a label set this node did not know, by compare-and-swap:
        (number, True) if this node created it (and its use key with it),
        (number, False) if another node had."""
        labels_key = self._keys.labels_key(text)
        for _ in range(ATTEMPTS):
            number = self._free_number()
            id_key = self._keys.id_key(number)
            try:
                ok, replies = self._etcd.txn(
                    [self._etcd.when_absent(id_key), self._etcd.when_absent(labels_key)],
                    [self._etcd.op_put(id_key, layout.encode({"labels": text})),
                     self._etcd.op_put(labels_key, layout.encode({"id": number})),
                     self._etcd.op_put(self._keys.user_key(number, self._node),
                                       layout.encode({}), lease=self._publisher.lease)],
                    [self._etcd.op_get(labels_key), self._etcd.op_get(id_key)])
            except KvstoreError as exc:
                raise KvstoreUnavailable("cannot allocate an identity for a new label set: %s"
                                         % exc) from None
            if ok:
                self._learn(number, text, replies[0])
                return number, True
            by_labels, by_id = replies
            if by_labels:
                try:
                    theirs = layout.read_labels(by_labels[0].value)
                except ValueError as exc:
                    raise KvstoreUnavailable("label set key %s holds a bad value (%s); "
                                             "fix or delete it" % (labels_key, exc)) from None
                try:
                    got = self._etcd.get(self._keys.id_key(theirs))
                except KvstoreError as exc:
                    raise KvstoreUnavailable("cannot allocate an identity for a new label set: "
                                             "%s" % exc) from None
                if got is not None:
                    self._learn(theirs, text, got.create_revision)
                    return theirs, False
                # A label key whose id key is gone: a half-collected
                # identity; try again (the collector removes both together).
            if by_id:
                try:
                    other, other_text = layout.read_identity(str(number), by_id[0].value)
                    self._learn(other, other_text, by_id[0].create_revision)
                except ValueError:
                    self._taken.add(number)  # taken, whatever it holds
        raise KvstoreUnavailable("no identity allocated for %s after %d attempts (many nodes "
                                 "allocating at once?)" % (text, ATTEMPTS))

    def _free_number(self):
        for candidate in range(self._next, ENDPOINT_LAST + 1):
            if candidate not in self._by_id and candidate not in self._taken:
                self._next = candidate
                return candidate
        for candidate in range(ENDPOINT_FIRST, self._next):
            if candidate not in self._by_id and candidate not in self._taken:
                self._next = candidate
                return candidate
        raise IdentityExhausted("no free identity between %d and %d" % (ENDPOINT_FIRST,
                                                                         ENDPOINT_LAST))

    def _learn(self, number, text, create_revision):
        old = self._by_id.get(number)
        if old is not None and old != text:
            self._by_labels.pop(old, None)
        self._by_id[number] = text
        self._by_labels[text] = number
        self._created[number] = create_revision

    # --- from the watch (worker thread) ---

    def apply(self, events):
        """Identity keys changed in etcd: returns ({number: labels} added,
        [number] removed) for the selector cache."""
        added, removed = {}, []
        with self._lock:
            for kind, tail, raw, created in events:
                if not tail.startswith("id/"):
                    continue  # labels/ and users/ keys are for transactions
                number_text = tail[3:]
                if kind == "delete":
                    try:
                        number = layout.identity_number(number_text)
                    except ValueError:
                        continue
                    text = self._by_id.pop(number, None)
                    self._created.pop(number, None)
                    if text is not None and self._by_labels.get(text) == number:
                        del self._by_labels[text]
                    if number in self._refs or number in self._unused_since:
                        self._warn("identity %d (%s) was deleted from etcd while this node "
                                   "uses it; it is re-created", number, text)
                        if text is not None:
                            self._recreate(number, text)
                            continue
                    if text is not None:
                        removed.append(number)
                    continue
                try:
                    number, text = layout.read_identity(number_text, raw)
                except ValueError as exc:
                    self._warn("skipped %s%s: %s", self._keys.identities, tail, exc)
                    continue
                if self._by_id.get(number) != text:
                    added[number] = frozenset(lbl.from_canonical(text))
                self._learn(number, text, created)
        return added, removed

    def _recreate(self, number, text):
        id_key, labels_key = self._keys.id_key(number), self._keys.labels_key(text)
        try:
            ok, replies = self._etcd.txn(
                [self._etcd.when_absent(id_key), self._etcd.when_absent(labels_key)],
                [self._etcd.op_put(id_key, layout.encode({"labels": text})),
                 self._etcd.op_put(labels_key, layout.encode({"id": number}))])
        except KvstoreError as exc:
            self._warn("cannot re-create identity %d: %s", number, exc)
            ok = False
        if ok:
            self._learn(number, text, replies[0])
        else:
            self._by_id[number] = text
            self._by_labels[text] = number

    def _warn(self, *args):
        if self._log is not None:
            self._log.warning(*args)
