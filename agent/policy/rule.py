"""Parsed policy rules: what parse.py produces and the repository holds.

A `Rule` is one `spec` (or one element of `specs`) of a CiliumNetworkPolicy,
with its selectors already scoped to the policy's namespace. Its `items` are
the ingress/egress/ingressDeny/egressDeny list elements, each a set of peer
selectors and port specs. Rules are immutable; nothing here evaluates them
(endpoint.py and reference.py do).
"""

from dataclasses import dataclass, field

INGRESS, EGRESS = "ingress", "egress"
DIRECTIONS = (INGRESS, EGRESS)
L3_ONLY = ((0, 0, 0),)  # the (proto, port, plen) of an item without toPorts


@dataclass(frozen=True, eq=False)
class RuleItem:
    """One ingress/egress (deny) element.

    `peers`: the selectors it names (the wildcard when it has only toPorts;
    empty when it has neither, which allows nothing). `ports`: None without
    toPorts (any protocol and port), else the PortSpecs (possibly none, which
    allows nothing, as in Cilium). `l4`: the entry triples (proto, port,
    port_plen) the ports expand to.
    """

    direction: str
    deny: bool
    peers: tuple
    ports: tuple | None
    l4: tuple

    def port_matches(self, proto, dport):
        if self.ports is None:
            return True
        return any(p.matches(proto, dport) for p in self.ports)


@dataclass(frozen=True, eq=False)
class Rule:
    name: str
    namespace: str  # "" for a cluster-wide policy
    source: str  # the file it came from ("" when given as text without one)
    line: int
    endpoint_selector: object
    items: tuple
    has_ingress: bool  # an ingress or ingressDeny section exists (even empty)
    has_egress: bool
    description: str = ""
    labels: frozenset = frozenset()
    index: int = 0  # position in the policy's specs
    spec: dict = field(default=None, repr=False)

    def enforces(self, direction):
        return self.has_ingress if direction == INGRESS else self.has_egress

    def selectors(self):
        """Every peer selector of the rule, each once."""
        seen = {}
        for item in self.items:
            for sel in item.peers:
                seen.setdefault(sel.key, sel)
        return list(seen.values())

    def cidr_prefixes(self):
        """Prefixes (and except prefixes) the rule names: each needs a CIDR identity."""
        out = set()
        for sel in self.selectors():
            prefix = getattr(sel, "prefix", None)
            if prefix is not None:
                out.add(prefix)
                out.update(sel.excepts)
        return out

    def summary(self):
        """A JSON-able description for `policy get`."""
        return {"name": self.name, "namespace": self.namespace, "source": self.source,
                "line": self.line, "description": self.description, "spec": self.spec}
