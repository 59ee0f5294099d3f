"""Numeric security identities for label sets.

Reserved identities (host 1, world 2, unmanaged 3, health 4, init 5) are
fixed. An endpoint's label set gets a number from 256 up; a prefix named by
policy gets a node-local CIDR identity from 2**24 up. Numbers are stored,
so the same labels map to the same number after an agent restart. Users
(endpoints, policy) take and drop references; an identity nobody references
is released only after a grace period, so a pod restarting (or an agent
restoring) finds its old number, and a remote node that still caches it
does not see it reused at once. Not clustered yet: the store is the node's
sqlite; a shared store (etcd) would replace `Store` behind the same calls.
"""

import threading
import time

from agent import labels as lbl

ENDPOINT_FIRST, ENDPOINT_LAST = lbl.MIN_ENDPOINT_IDENTITY, lbl.MAX_ENDPOINT_IDENTITY
CIDR_FIRST, CIDR_LAST = lbl.MIN_CIDR_IDENTITY, lbl.MIN_CIDR_IDENTITY + 0xFFFFFF
RESERVED = {num: lbl.canonical(labels) for num, labels in lbl.RESERVED_IDENTITIES.items()}


class IdentityExhausted(Exception):
    pass


class IdentityAllocator:
    """Label-set text (canonical, `;`-joined) <-> number, with references."""

    def __init__(self, store, grace_seconds=300.0, clock=time.monotonic):
        self._store = store
        self._grace = grace_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._by_labels = {}
        self._by_id = {}
        self._refs = {}
        self._unused_since = {}
        now = clock()
        for number, labels in store.identities():
            self._by_labels[labels] = number
            self._by_id[number] = labels
            self._unused_since[number] = now  # restored endpoints re-take them

    def acquire(self, labels_text, cidr=False):
        """A reference to the identity of this label set, allocating if new.

        Returns (number, created) where created says the number is new to
        the node (selectors must learn about it).
        """
        with self._lock:
            number = self._by_labels.get(labels_text)
            created = number is None
            if created:
                number = self._free_number(CIDR_FIRST if cidr else ENDPOINT_FIRST,
                                           CIDR_LAST if cidr else ENDPOINT_LAST)
                self._store.put_identity(number, labels_text)
                self._by_labels[labels_text] = number
                self._by_id[number] = labels_text
            self._refs[number] = self._refs.get(number, 0) + 1
            self._unused_since.pop(number, None)
            return number, created

    def release(self, number):
        with self._lock:
            left = self._refs.get(number, 0) - 1
            if left > 0:
                self._refs[number] = left
                return
            self._refs.pop(number, None)
            if number in self._by_id:
                self._unused_since[number] = self._clock()

    def expire(self):
        """Forget identities unused for longer than the grace period."""
        now = self._clock()
        gone = []
        with self._lock:
            for number, since in list(self._unused_since.items()):
                if now - since >= self._grace:
                    labels = self._by_id.pop(number)
                    del self._by_labels[labels]
                    del self._unused_since[number]
                    self._store.delete_identity(number)
                    gone.append(number)
        return gone

    def _free_number(self, first, last):
        for candidate in range(first, last + 1):
            if candidate not in self._by_id:
                return candidate
        raise IdentityExhausted("no free identity between %d and %d" % (first, last))

    def all(self):
        """{number: labels text} of every identity the node knows, reserved included."""
        with self._lock:
            out = dict(self._by_id)
        out.update(RESERVED)
        return out

    def listing(self):
        with self._lock:
            rows = [{"id": n, "labels": labels, "references": self._refs.get(n, 0),
                     "reserved": False} for n, labels in self._by_id.items()]
        rows += [{"id": n, "labels": labels, "references": None, "reserved": True}
                 for n, labels in RESERVED.items()]
        return sorted(rows, key=lambda r: r["id"])
