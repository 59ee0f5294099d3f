"""Selectors: which identities a rule's peer (or endpoint) selector matches.

Three kinds, each immutable with a canonical text `key` (identical selectors
share one selector-cache slot) and `matches(identity_id, labels) -> bool`
(`labels`: a label set, or a `LabelIndex` of one when matching many):

- `LabelSelector`: matchLabels / matchExpressions (In, NotIn, Exists,
  DoesNotExist) over label keys; a key without a source matches that key
  from any source. The empty selector is the *wildcard* (`wildcard` is
  True): it stands for identity 0 ("any") in policy entries.
- `EntitySelector`: world, host, cluster (`all` is the wildcard).
- `CIDRSelector`: CIDR identities whose prefix lies inside the rule's prefix
  and outside its `except` prefixes; a /0 also matches world (2).

When an identity carries a key under several sources (`cni:app=a`,
`k8s:app=b`), an any-source requirement sees all its values: `In` holds if
one of them is listed, `NotIn` is exactly `not In`, `DoesNotExist` exactly
`not Exists`. This module knows nothing of YAML (parse.py) or caching
(selectorcache.py).
"""

import functools
import ipaddress

from agent import labels as L

IN, NOT_IN, EXISTS, DOES_NOT_EXIST = "In", "NotIn", "Exists", "DoesNotExist"
OPERATORS = (IN, NOT_IN, EXISTS, DOES_NOT_EXIST)
ENTITIES = ("world", "host", "cluster", "all")


class LabelIndex:
    """A label set indexed for matching: (source, key) → value, key → values.

    Build one per identity (the selector cache does) or per endpoint label
    set when many selectors are matched against the same labels.
    """

    __slots__ = ("labels", "by_source_key", "by_key")

    def __init__(self, labels):
        self.labels = labels
        self.by_source_key = {(s, k): v for s, k, v in labels}
        by_key = {}
        for _, k, v in labels:
            by_key.setdefault(k, set()).add(v)
        self.by_key = by_key


def index(labels):
    return labels if isinstance(labels, LabelIndex) else LabelIndex(labels)


class Requirement:
    """One `source:key OP values` condition of a label selector."""

    __slots__ = ("source", "key", "op", "values", "text", "test")

    def __init__(self, source, key, op, values=()):
        if op not in OPERATORS:
            raise ValueError("unknown selector operator '%s' (want one of %s)" % (op, ", ".join(OPERATORS)))
        values = frozenset(values)
        if op in (IN, NOT_IN) and not values:
            raise ValueError("operator %s on key '%s' needs at least one value" % (op, key))
        if op in (EXISTS, DOES_NOT_EXIST) and values:
            raise ValueError("operator %s on key '%s' takes no values" % (op, key))
        self.source, self.key, self.op, self.values = source, key, op, values
        name = "%s:%s" % (source, key)
        if op == IN:
            self.text = ("%s=%s" % (name, next(iter(values))) if len(values) == 1
                         else "%s in (%s)" % (name, ",".join(sorted(values))))
        elif op == NOT_IN:
            self.text = "%s notin (%s)" % (name, ",".join(sorted(values)))
        else:
            self.text = name if op == EXISTS else "!" + name
        self.test = self._compile()

    def _compile(self):
        """A function LabelIndex → bool for this requirement (hot: keep it flat)."""
        key, values, positive = self.key, self.values, self.op in (IN, EXISTS)
        if self.source == L.SOURCE_ANY:
            if self.op in (IN, NOT_IN):
                def test(ix):
                    found = ix.by_key.get(key)
                    return (found is not None and not values.isdisjoint(found)) == positive
            else:
                def test(ix):
                    return (key in ix.by_key) == positive
        else:
            skey, missing = (self.source, key), object()
            if self.op in (IN, NOT_IN):
                def test(ix):
                    return (ix.by_source_key.get(skey, missing) in values) == positive
            else:
                def test(ix):
                    return (skey in ix.by_source_key) == positive
        return test

    def __repr__(self):
        return "Requirement(%s)" % self.text

    def matches(self, labels):
        return self.test(index(labels))


class Selector:
    """Base: a canonical `key`, `wildcard`, and `matches(identity_id, labels)`."""

    __slots__ = ("key",)
    wildcard = False

    def matches(self, identity_id, labels):
        raise NotImplementedError

    def __eq__(self, other):
        return isinstance(other, Selector) and self.key == other.key

    def __hash__(self):
        return hash(self.key)

    def __repr__(self):
        return "%s(%s)" % (type(self).__name__, self.key)

    def __str__(self):
        return self.key


class LabelSelector(Selector):
    __slots__ = ("requirements", "wildcard", "tests")

    def __init__(self, requirements=()):
        reqs = {r.text: r for r in requirements}
        self.requirements = tuple(reqs[t] for t in sorted(reqs))
        self.tests = tuple(r.test for r in self.requirements)
        self.wildcard = not self.requirements
        self.key = "{%s}" % ",".join(r.text for r in self.requirements)

    @classmethod
    def from_k8s(cls, match_labels=None, match_expressions=None):
        """From the Kubernetes shape; keys without a source mean `any`."""
        reqs = []
        for raw_key, value in (match_labels or {}).items():
            source, key = _selector_key(raw_key)
            value = "" if value is None else value
            L.check_value(value, raw_key)
            reqs.append(Requirement(source, key, IN, (value,)))
        for expr in match_expressions or ():
            source, key = _selector_key(expr.get("key"))
            values = expr.get("values") or ()
            for value in values:
                L.check_value(value, expr.get("key"))
            reqs.append(Requirement(source, key, expr.get("operator"), values))
        return cls(reqs)

    def matches(self, identity_id, labels):
        if not self.tests:
            return True
        ix = labels if type(labels) is LabelIndex else LabelIndex(labels)
        for test in self.tests:
            if not test(ix):
                return False
        return True

    def names_key(self, key, sources=(L.SOURCE_K8S, L.SOURCE_ANY)):
        return any(r.key == key and r.source in sources for r in self.requirements)

    def scoped(self, namespace, force=False):
        """This selector limited to `namespace` (Kubernetes' rule, docs/policy.md).

        A peer selector naming the namespace key itself is left alone. With
        `force` (a namespaced policy's endpointSelector) the policy's own
        namespace always applies, replacing a matchLabels on that key, as
        Cilium does: a namespaced policy cannot select pods elsewhere.
        """
        if not namespace:
            return self
        ns_req = Requirement(L.SOURCE_K8S, L.NAMESPACE_KEY, IN, (namespace,))
        if force:
            keep = [r for r in self.requirements
                    if not (r.source == L.SOURCE_K8S and r.key == L.NAMESPACE_KEY and r.op == IN
                            and len(r.values) == 1)]
            return LabelSelector(keep + [ns_req])
        if self.names_key(L.NAMESPACE_KEY):
            return self
        return LabelSelector(list(self.requirements) + [ns_req])


def _selector_key(raw):
    if not isinstance(raw, str):
        raise ValueError("selector key %r is not a string" % (raw,))
    source, key = L.split_source(raw, L.SOURCE_ANY)
    L.check_key(key, "selector key")
    return source, key


WILDCARD = LabelSelector()


class EntitySelector(Selector):
    __slots__ = ("entity",)

    def __init__(self, entity):
        if entity not in ENTITIES or entity == "all":
            raise ValueError("use entity_selector() for entity %r" % (entity,))
        self.entity = entity
        self.key = "entity:" + entity

    def matches(self, identity_id, labels):
        if self.entity == "host":
            return identity_id == L.ID_HOST
        world = L.WORLD_LABEL in (labels.labels if type(labels) is LabelIndex else labels)
        return world if self.entity == "world" else not world


def entity_selector(entity):
    """The selector for a `fromEntities`/`toEntities` name; `all` is the wildcard."""
    if entity not in ENTITIES:
        raise ValueError("entity '%s' is not supported (supported: %s)" % (entity, ", ".join(ENTITIES)))
    return WILDCARD if entity == "all" else EntitySelector(entity)


def parse_prefix(text):
    """A CIDR (host bits are masked, as Cilium does) or bare address → network."""
    if not isinstance(text, str):
        raise ValueError("bad CIDR %r: not a string" % (text,))
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError("bad CIDR '%s'" % text) from None


@functools.lru_cache(maxsize=65536)
def _cidr_key(text):
    """A `cidr:` label key as (version, network bits, prefix length), or None.

    Cached: the same CIDR identities are matched against every CIDR
    selector, and parsing with `ipaddress` each time made importing a
    thousand fromCIDR rules take seconds.
    """
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None
    return net.version, int(net.network_address), net.prefixlen


def _inside(inner, outer):
    """Is (version, bits, plen) `inner` inside `outer`?"""
    if inner[0] != outer[0] or inner[2] < outer[2]:
        return False
    shift = (32 if outer[0] == 4 else 128) - outer[2]
    return inner[1] >> shift == outer[1] >> shift


class CIDRSelector(Selector):
    __slots__ = ("prefix", "excepts", "_outer", "_holes")

    def __init__(self, prefix, excepts=()):
        self.prefix = prefix
        for exc in excepts:
            if exc.version != prefix.version or not exc.subnet_of(prefix):
                raise ValueError("except prefix %s is not inside %s" % (exc, prefix))
        self.excepts = tuple(sorted(set(excepts), key=lambda n: (n.network_address, n.prefixlen)))
        self._outer = (prefix.version, int(prefix.network_address), prefix.prefixlen)
        self._holes = tuple((e.version, int(e.network_address), e.prefixlen) for e in self.excepts)
        self.key = "cidr:%s" % prefix
        if self.excepts:
            self.key += " except " + ",".join(str(e) for e in self.excepts)

    def contains(self, net):
        """True when network `net` lies inside the prefix and outside every except."""
        if net.version != self.prefix.version or not net.subnet_of(self.prefix):
            return False
        return not any(net.subnet_of(e) for e in self.excepts)

    def matches(self, identity_id, labels):
        if identity_id == L.ID_WORLD and self.prefix.prefixlen == 0:
            return True
        for source, key, _ in (labels.labels if type(labels) is LabelIndex else labels):
            if source == L.SOURCE_CIDR:
                net = _cidr_key(key)
                if net is not None and _inside(net, self._outer) and \
                        not any(_inside(net, hole) for hole in self._holes):
                    return True
        return False
