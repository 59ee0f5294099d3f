"""The policy repository: the rules in force, and what they say per endpoint.

Rules arrive a file at a time (`replace_source`, atomic: a file's previous
rules and any same-named policies are replaced in one step) and leave by
policy name or by source file. Every change bumps `revision`.

`resolve(labels)` answers "what applies to an endpoint with these labels":
which rules select it, whether it is enforced per direction, and its entry
*templates*: for each peer selector, the (direction, deny, l4 blocks)
combinations with how many rule items contribute them. Rules are grouped by
endpoint selector, each group's templates summed in advance, so resolving
costs one match per distinct endpoint selector, not per rule; results are
cached per label set until the next revision.

It does not compute identities or entries (endpoint.py does, with the
selector cache) and it does not read files (parse.py does).
"""

from agent.policy.rule import EGRESS, INGRESS
from agent.policy.selector import LabelIndex


class Resolved:
    """What the rules say for one label set (shared by endpoints with those labels)."""

    __slots__ = ("rules", "enforced", "templates")

    def __init__(self, rules, enforced, templates):
        self.rules = rules  # tuple of Rule
        self.enforced = enforced  # {"ingress": bool, "egress": bool}
        self.templates = templates  # selector key → (selector, ((direction, deny, l4), count), ...)


class _Group:
    """The rules sharing one endpoint selector, with their templates summed."""

    __slots__ = ("selector", "tests", "rules", "templates", "ingress", "egress")

    def __init__(self, selector):
        self.selector, self.rules = selector, []
        self.tests = selector.tests

    def finish(self):
        self.ingress = any(r.has_ingress for r in self.rules)
        self.egress = any(r.has_egress for r in self.rules)
        templates = {}
        for rule in self.rules:
            for item in rule.items:
                if not item.l4:
                    continue
                for sel in item.peers:
                    sel_templates = templates.setdefault(sel.key, (sel, {}))[1]
                    shape = (item.direction, item.deny, item.l4)
                    sel_templates[shape] = sel_templates.get(shape, 0) + 1
        self.templates = {k: (sel, tuple(t.items())) for k, (sel, t) in templates.items()}


def _merge(into, shapes):
    counts = dict(into)
    for shape, count in shapes:
        counts[shape] = counts.get(shape, 0) + count
    return tuple(counts.items())


class Repository:
    def __init__(self):
        self.revision = 0
        self._rules = []  # in arrival order
        self._groups = {}
        self._resolved = {}  # label set → Resolved, for this revision

    def rules(self):
        return tuple(self._rules)

    def replace_source(self, source, rules):
        """Atomically replace the rules from file `source` (and same-named policies) by `rules`."""
        names = {(r.namespace, r.name) for r in rules}
        keep = [r for r in self._rules if r.source != source and (r.namespace, r.name) not in names]
        return self._commit(keep + list(rules))

    def add(self, rules):
        """Add rules, replacing policies of the same name/namespace wherever they came from."""
        names = {(r.namespace, r.name) for r in rules}
        return self._commit([r for r in self._rules if (r.namespace, r.name) not in names] + list(rules))

    def delete(self, name, namespace=None):
        """Delete policy `name` (in `namespace`; None = in any namespace). Returns the rules removed."""
        gone = [r for r in self._rules if r.name == name and (namespace is None or r.namespace == namespace)]
        if gone:
            self._commit([r for r in self._rules if r not in gone])
        return gone

    def has_source(self, source):
        return any(r.source == source for r in self._rules)

    def delete_source(self, source):
        """Delete every rule loaded from file `source`. Returns the rules removed."""
        gone = [r for r in self._rules if r.source == source]
        if gone:
            self._commit([r for r in self._rules if r.source != source])
        return gone

    def _commit(self, rules):
        groups = {}
        for rule in rules:
            group = groups.get(rule.endpoint_selector.key)
            if group is None:
                group = groups[rule.endpoint_selector.key] = _Group(rule.endpoint_selector)
            group.rules.append(rule)
        for group in groups.values():
            group.finish()
        self._rules, self._groups, self._resolved = rules, groups, {}
        self.revision += 1
        return self.revision

    def forget_resolved(self):
        """Drop the per-label-set cache (benchmarks measure resolving from the rules)."""
        self._resolved = {}

    def cidr_prefixes(self):
        """Every prefix the rules name (CIDRs and excepts): each needs a CIDR identity."""
        out = set()
        for rule in self._rules:
            out |= rule.cidr_prefixes()
        return out

    def resolve(self, labels):
        labels = frozenset(labels)
        hit = self._resolved.get(labels)
        if hit is not None:
            return hit
        ix = LabelIndex(labels)
        groups = []
        for group in self._groups.values():
            for test in group.tests:  # inlined LabelSelector.matches: this loop is the hot one
                if not test(ix):
                    break
            else:
                groups.append(group)
        if len(groups) == 1:
            rules, templates = tuple(groups[0].rules), groups[0].templates
        else:
            rules, templates = tuple(r for g in groups for r in g.rules), {}
            for g in groups:
                for key, pair in g.templates.items():
                    prev = templates.get(key)
                    templates[key] = pair if prev is None else (prev[0], _merge(prev[1], pair[1]))
        enforced = {INGRESS: any(g.ingress for g in groups), EGRESS: any(g.egress for g in groups)}
        res = self._resolved[labels] = Resolved(rules, enforced, templates)
        return res
