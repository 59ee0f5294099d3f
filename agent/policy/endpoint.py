"""One endpoint's policy entries, kept current by deltas (docs/policy.md).

`EndpointPolicy` turns the repository's templates for the endpoint's labels
and the selector cache's selections into the entry set the datapath
enforces: tuples `(direction, identity, proto, port, port_plen, deny)` plus
`enforced = {"ingress": bool, "egress": bool}`. Each entry is refcounted by
the rule items that produce it. It writes through `apply(adds, deletes,
enforced)` only the entries that changed:

- an identity change reported by the selector cache touches only the
  entries of the selectors that changed (no recompute);
- `regenerate()` (rules changed) and `set_labels()` (the endpoint's own
  identity changed) recompute fully, and still apply only the difference
  from what was written before.

If `apply` raises, what it was asked to write is retried with the next
change (or `regenerate()`); the entries known written are `realized`.
The wildcard selector stands for identity 0. With `allow_host` (the
agent's `allow-localhost: always`, as in Cilium) an endpoint enforcing
ingress also gets an L3 allow entry for the host identity, so the node's
own traffic (kubelet probes, hostPort hairpin) is not default-denied; a
deny rule for the host still wins. Not thread-safe; no datapath access of
its own.
"""

from agent.labels import ID_HOST
from agent.policy.rule import EGRESS, INGRESS

HOST_ALLOW = (INGRESS, ID_HOST, 0, 0, 0, False)


class EndpointPolicy:
    def __init__(self, ep_id, identity_labels, repository, selector_cache, apply,
                 allow_host=False):
        self.ep_id = ep_id
        self.allow_host = allow_host
        self.labels = frozenset(identity_labels)
        self._repo, self._cache, self._apply = repository, selector_cache, apply
        self._templates = {}  # selector key → (selector, ((direction, deny, l4), count), ...)
        self._refs = {}  # entry → refcount
        self.realized = set()  # entries apply() has written
        self.enforced = {INGRESS: False, EGRESS: False}
        self._realized_enforced = None
        self._pending = set()  # entries touched since the last successful apply
        self.revision = None
        try:
            self.regenerate()
        except BaseException:
            self.close()
            raise

    def __str__(self):
        return "endpoint %s" % self.ep_id

    @property
    def entries(self):
        """The desired entry set (equal to `realized` once apply succeeded)."""
        return frozenset(self._refs)

    def refcount(self, entry):
        return self._refs.get(entry, 0)

    # -- full computation --------------------------------------------------

    def set_labels(self, labels):
        """The endpoint moved to another identity: recompute, apply the difference."""
        self.labels = frozenset(labels)
        self.regenerate()

    def regenerate(self):
        """Recompute from the repository (rules changed); apply the difference."""
        res = self._repo.resolve(self.labels)
        old = self._templates
        for key, (sel, _) in res.templates.items():
            if key not in old:
                self._cache.add_user(sel, self)
        self._templates = res.templates
        for key, (sel, _) in old.items():
            if key not in res.templates:
                self._cache.remove_user(sel, self)
        refs = {}
        for sel, shapes in res.templates.values():
            ids = (0,) if sel.wildcard else self._cache.selections(sel)
            for (direction, deny, l4), count in shapes:
                for ident in ids:
                    for proto, port, plen in l4:
                        entry = (direction, ident, proto, port, plen, deny)
                        refs[entry] = refs.get(entry, 0) + count
        if self.allow_host and res.enforced[INGRESS]:
            refs[HOST_ALLOW] = refs.get(HOST_ALLOW, 0) + 1
        self._refs = refs
        self.enforced = dict(res.enforced)
        self.revision = self._repo.revision
        self._pending.clear()
        self._flush(set(refs) | self.realized)

    def close(self):
        """Stop following the selector cache (the caller removes the map entries)."""
        for sel, _ in self._templates.values():
            self._cache.remove_user(sel, self)
        self._templates = {}

    # -- deltas from the selector cache --------------------------------------

    def selections_changed(self, selector, added, removed):
        tmpl = self._templates.get(selector.key)
        if tmpl is None or selector.wildcard:
            return
        refs, pending = self._refs, self._pending
        for (direction, deny, l4), count in tmpl[1]:
            for ident in added:
                for proto, port, plen in l4:
                    entry = (direction, ident, proto, port, plen, deny)
                    refs[entry] = refs.get(entry, 0) + count
                    pending.add(entry)
            for ident in removed:
                for proto, port, plen in l4:
                    entry = (direction, ident, proto, port, plen, deny)
                    left = refs[entry] - count
                    if left:
                        refs[entry] = left
                    else:
                        del refs[entry]
                    pending.add(entry)

    def selections_done(self):
        if self._pending:
            self._flush(self._pending)

    def _flush(self, touched):
        refs, realized = self._refs, self.realized
        adds = sorted(e for e in touched if e in refs and e not in realized)
        deletes = sorted(e for e in touched if e not in refs and e in realized)
        enforced_changed = self._realized_enforced != self.enforced
        if not adds and not deletes and not enforced_changed:
            self._pending.clear()
            return
        self._pending = set(touched)
        self._apply(adds, deletes, dict(self.enforced))
        realized.difference_update(deletes)
        realized.update(adds)
        self._realized_enforced = dict(self.enforced)
        self._pending = set()
