"""A Cilium-1.6-style selector cache: selector → the identities it selects.

Each selector in use is matched against every known identity once, when its
first user adds it; the result is kept. `update_identities` matches only the
added identities against the cached selectors (and drops removed ones), then
tells each affected selector's users exactly what changed:
`user.selections_changed(selector, added_ids, removed_ids)` for each
selector, then `user.selections_done()` once per user, so that a user can
write all of one update's changes together. Users are refcounted per
selector; a selector with no users is dropped.

Not thread-safe: the agent calls it from its one policy thread. It knows
nothing about rules or entries (endpoint.py turns selections into entries).
"""

from agent.policy.selector import LabelIndex


class _Slot:
    __slots__ = ("selector", "selections", "users")

    def __init__(self, selector, selections):
        self.selector, self.selections, self.users = selector, selections, {}


class SelectorCache:
    def __init__(self, identities=None):
        self._identities = {}  # identity id → label set
        self._index = {}  # identity id → LabelIndex of its labels
        self._slots = {}  # selector key → _Slot
        for ident, labels in (identities or {}).items():
            self._identities[ident], self._index[ident] = labels, LabelIndex(labels)

    def identities(self):
        """Known identities (id → label set); read-only."""
        return self._identities

    def __contains__(self, selector):
        return selector.key in self._slots

    def add_user(self, selector, user):
        """Register `user` of `selector`; returns its selections (a live set: do not modify)."""
        slot = self._slots.get(selector.key)
        if slot is None:
            selections = {i for i, ix in self._index.items() if selector.matches(i, ix)}
            slot = self._slots[selector.key] = _Slot(selector, selections)
        slot.users[user] = slot.users.get(user, 0) + 1
        return slot.selections

    def remove_user(self, selector, user):
        slot = self._slots.get(selector.key)
        if slot is None or user not in slot.users:
            raise KeyError("selector %s has no user %s" % (selector.key, user))
        slot.users[user] -= 1
        if not slot.users[user]:
            del slot.users[user]
            if not slot.users:
                del self._slots[selector.key]

    def selections(self, selector):
        """The identities a cached selector selects (live set: do not modify)."""
        return self._slots[selector.key].selections

    def update_identities(self, added=None, removed=()):
        """Add/replace identities (id → labels) and remove ids; notify users of the deltas.

        Every user is notified even if another's callback raises; the first
        exception is re-raised afterwards. Returns the number of selectors changed.
        """
        changes = {}  # selector key → (added ids, removed ids)

        def note(slot, ident, gained):
            pair = changes.get(slot.selector.key)
            if pair is None:
                pair = changes[slot.selector.key] = (set(), set())
            (pair[0] if gained else pair[1]).add(ident)
            (pair[1] if gained else pair[0]).discard(ident)

        slots = list(self._slots.values())
        for ident in removed:
            if self._identities.pop(ident, None) is None:
                continue
            del self._index[ident]
            for slot in slots:
                if ident in slot.selections:
                    slot.selections.discard(ident)
                    note(slot, ident, False)
        for ident, labels in (added or {}).items():
            if self._identities.get(ident) == labels:
                continue
            self._identities[ident] = labels
            ix = self._index[ident] = LabelIndex(labels)
            for slot in slots:
                now = slot.selector.matches(ident, ix)
                if now != (ident in slot.selections):
                    (slot.selections.add if now else slot.selections.discard)(ident)
                    note(slot, ident, now)
        return self._notify(changes)

    def _notify(self, changes):
        touched, first_error = {}, None
        for key, (gained, lost) in changes.items():
            slot = self._slots[key]
            if not gained and not lost:
                continue
            gained, lost = frozenset(gained), frozenset(lost)
            for user in list(slot.users):
                touched[user] = True
                try:
                    user.selections_changed(slot.selector, gained, lost)
                except Exception as exc:  # noqa: BLE001 - the others must still hear of it
                    first_error = first_error or exc
        for user in touched:
            done = getattr(user, "selections_done", None)
            try:
                if done is not None:
                    done()
            except Exception as exc:  # noqa: BLE001
                first_error = first_error or exc
        if first_error is not None:
            raise first_error
        return len(changes)

    def selectors(self):
        """For `cilium-cni policy selectors`: each selector, its identities and users."""
        return [{"selector": key, "identities": sorted(slot.selections),
                 "users": sorted(str(u) for u in slot.users)}
                for key, slot in sorted(self._slots.items())]
