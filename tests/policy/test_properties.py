"""Property tests: the verdict over EndpointPolicy entries equals the rules' own.

Random policies (written as JSON and parsed, so the parser is exercised too),
random identities, and every (direction, remote, protocol, port) of a grid:
`verdict(entries)` must equal `reference_verdict(rules)`. Remotes outside
the cluster are addresses resolved through a model ipcache (longest prefix
among the CIDR identities allocated for the rules' prefixes, else world);
the reference judges CIDR rules on the address itself. Entries built by
selector-cache deltas must equal a fresh computation.
"""

import ipaddress
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import labels as L
from agent.policy.endpoint import EndpointPolicy
from agent.policy.parse import parse_text
from agent.policy.repository import Repository
from agent.policy.selectorcache import SelectorCache
from agent.policy.verdict import reference_verdict, verdict

pytestmark = pytest.mark.unit

KEYS, VALUES, NAMESPACES = ("app", "role", "team"), ("a", "b", "c"), ("n1", "n2")
PREFIXES = ("10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "0.0.0.0/0", "192.168.0.0/16", "2001:db8::/32", "::/0")
ADDRESSES = ("10.1.2.3", "10.1.9.9", "10.200.0.1", "192.168.1.1", "8.8.8.8", "2001:db8::1", "2001:dead::1")
PORTS = (0, 53, 80, 81, 1000, 1005, 1023, 1024, 1030)
PROTOS = (6, 17, 132, 1)

label_key = st.tuples(st.sampled_from(("", "k8s:", "cni:", "any:")), st.sampled_from(KEYS)).map("".join)
expression = st.one_of(
    st.fixed_dictionaries({"key": label_key, "operator": st.sampled_from(["In", "NotIn"]),
                           "values": st.lists(st.sampled_from(VALUES), min_size=1, max_size=2)}),
    st.fixed_dictionaries({"key": label_key, "operator": st.sampled_from(["Exists", "DoesNotExist"])}))
selector = st.fixed_dictionaries({}, optional={
    "matchLabels": st.dictionaries(label_key, st.sampled_from(VALUES), max_size=2),
    "matchExpressions": st.lists(expression, max_size=1)})


@st.composite
def cidr_set(draw):
    cidr = draw(st.sampled_from(PREFIXES))
    net = ipaddress.ip_network(cidr)
    inside = [p for p in PREFIXES if ipaddress.ip_network(p).version == net.version
              and ipaddress.ip_network(p).subnet_of(net) and p != cidr]
    out = {"cidr": cidr}
    if inside:
        out["except"] = draw(st.lists(st.sampled_from(inside), max_size=2, unique=True))
    return out


@st.composite
def port(draw):
    p = {"port": draw(st.sampled_from([0, 53, 80, 1000, 1023]))}
    if p["port"] and draw(st.booleans()):
        p["endPort"] = p["port"] + draw(st.sampled_from([0, 1, 5, 30]))
    proto = draw(st.sampled_from([None, "TCP", "UDP", "SCTP", "ANY"]))
    if proto:
        p["protocol"] = proto
    return p


def item(prefix):
    return st.fixed_dictionaries({}, optional={
        prefix + "Endpoints": st.lists(selector, max_size=2),
        prefix + "CIDR": st.lists(st.sampled_from(PREFIXES), max_size=1),
        prefix + "CIDRSet": st.lists(cidr_set(), max_size=1),
        prefix + "Entities": st.lists(st.sampled_from(["world", "host", "cluster", "all"]), max_size=2),
        "toPorts": st.lists(st.fixed_dictionaries({"ports": st.lists(port(), min_size=1, max_size=2)}), max_size=1),
    })


spec = st.fixed_dictionaries({"endpointSelector": selector}, optional={
    "ingress": st.lists(item("from"), max_size=2), "ingressDeny": st.lists(item("from"), max_size=1),
    "egress": st.lists(item("to"), max_size=2), "egressDeny": st.lists(item("to"), max_size=1)})
policy = st.fixed_dictionaries({"namespace": st.sampled_from(["", "n1", "n2"]),
                                "specs": st.lists(spec, min_size=1, max_size=2)})
label_set = st.builds(
    lambda pairs, ns: frozenset(pairs) | ({("k8s", L.NAMESPACE_KEY, ns)} if ns else set()),
    st.sets(st.tuples(st.sampled_from(["k8s", "cni"]), st.sampled_from(KEYS), st.sampled_from(VALUES)),
            max_size=3),
    st.sampled_from(["", "n1", "n2"]))


def to_text(policies):
    docs = []
    for i, p in enumerate(policies):
        meta = {"name": "p%d" % i}
        if p["namespace"]:
            meta["namespace"] = p["namespace"]
        docs.append(json.dumps({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
                                "metadata": meta, "specs": p["specs"]}))
    return "\n---\n".join(docs)


class World:
    """Identities: reserved, endpoints, and a CIDR identity per prefix the rules name."""

    def __init__(self, rules, endpoint_labels):
        self.ids = dict(L.RESERVED_IDENTITIES)
        for i, lbls in enumerate(endpoint_labels):
            self.ids[L.MIN_ENDPOINT_IDENTITY + i] = lbls
        self.cidr_ids = {}
        prefixes = set()
        for r in rules:
            prefixes |= r.cidr_prefixes()
        for i, net in enumerate(sorted(prefixes, key=str)):
            ident = L.MIN_CIDR_IDENTITY + i
            self.ids[ident] = L.cidr_labels(net)
            self.cidr_ids[net] = ident

    def resolve(self, address):
        """The model ipcache: longest CIDR identity prefix holding the address, else world."""
        addr = ipaddress.ip_address(address)
        best = None
        for net, ident in self.cidr_ids.items():
            if addr.version == net.version and addr in net and (best is None or net.prefixlen > best[0]):
                best = (net.prefixlen, ident)
        return best[1] if best else L.ID_WORLD


def remotes(world):
    for ident, lbls in world.ids.items():
        if ident < L.MIN_CIDR_IDENTITY:
            yield ident, lbls, None
    for address in ADDRESSES:
        ident = world.resolve(address)
        yield ident, world.ids[ident], address


def check_all(rules, local, ep, world):
    n, entries = 0, ep.entries
    for remote_id, remote_labels, address in remotes(world):
        for direction in ("ingress", "egress"):
            for proto in PROTOS:
                for dport in PORTS:
                    got = verdict(entries, ep.enforced, direction, remote_id, proto, dport)
                    want = reference_verdict(rules, local, remote_id, remote_labels, direction, proto, dport,
                                             cidr_of_remote=address)
                    assert got == want, (direction, remote_id, address, proto, dport, got, want)
                    n += 1
    return n


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies=st.lists(policy, min_size=1, max_size=3), local=label_set,
       endpoint_labels=st.lists(label_set, min_size=1, max_size=5), late=st.data())
def test_entries_verdict_equals_reference(policies, local, endpoint_labels, late):
    rules = parse_text(to_text(policies), "gen.yaml")
    world = World(rules, endpoint_labels)
    # start with a subset of identities known, then deliver the rest as deltas
    known = {i: lbls for i, lbls in world.ids.items() if i < L.MIN_ENDPOINT_IDENTITY}
    later = {i: lbls for i, lbls in world.ids.items() if i not in known}
    first = late.draw(st.sets(st.sampled_from(sorted(later))) if later else st.just(set()))
    known.update({i: later.pop(i) for i in first})
    cache, repo = SelectorCache(known), Repository()
    repo.replace_source("gen.yaml", rules)
    writes = []
    ep = EndpointPolicy(1, local, repo, cache, lambda a, d, e: writes.append((a, d)))
    cache.update_identities(later, ())
    check_all(rules, local, ep, world)
    assert ep.entries == ep.realized == EndpointPolicy(2, local, repo, cache, lambda *a: None).entries
    # the writes replayed in order give exactly the entry set: deltas never lose or duplicate
    replay = set()
    for adds, deletes in writes:
        assert not (set(adds) & replay) and set(deletes) <= replay
        replay = (replay - set(deletes)) | set(adds)
    assert replay == ep.entries
    # endpoint identities leave: deltas again equal a fresh computation, and the verdicts still hold
    endpoints = sorted(i for i in world.ids if L.MIN_ENDPOINT_IDENTITY <= i < L.MIN_CIDR_IDENTITY)
    gone = late.draw(st.sets(st.sampled_from(endpoints)) if endpoints else st.just(set()))
    cache.update_identities({}, gone)
    for ident in gone:
        world.ids.pop(ident)
    assert ep.entries == EndpointPolicy(3, local, repo, cache, lambda *a: None).entries
    assert check_all(rules, local, ep, world) > 0
    # CIDR identities leave too (the allocator would keep them while policy names them)
    cache.update_identities({}, list(world.cidr_ids.values()))
    assert ep.entries == ep.realized == EndpointPolicy(4, local, repo, cache, lambda *a: None).entries
