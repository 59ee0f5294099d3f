"""Property: from policy text to kernel verdict, the datapath decides every
new connection as the rules themselves say.

Each example draws CiliumNetworkPolicies (rendered as JSON, a YAML stream
or a YAML `List`, and parsed by the real parser), one local endpoint with
random labels, remote endpoints (random label sets, each with a distinct
identity number, addresses in the ipcache), the host and health addresses,
and a CIDR identity (from 2**24, with its ipcache entry) for every prefix
the rules name, as `agent/enforcement.py` does. A `SelectorCache`, a
`Repository` and an `EndpointPolicy` whose `apply` writes into a loaded
`Datapath` (policy entries, the endpoint's enforcement flags) turn that
into map contents; some identities and the rules arrive as deltas, in
either order, as they do in the agent.

Then packets (IPv4/IPv6; TCP, UDP and SCTP SYNs to ports around the rules'
port and range edges and random ones; ICMP/ICMPv6 echo; GRE) run through
`to_container` (ingress: the remote is the source) or `from_container`
(egress: the remote is the destination) with BPF_PROG_TEST_RUN, on lo
(ifindex 1, where the test's endpoints entry lives). Every packet is a new
connection (connection tracking is flushed whenever a packet would meet an
earlier connection). Its verdict and drop reason (the perf event, and the
per-reason counters) must equal `reference_verdict()` on the parsed rules,
with the remote's identity from who is at its address (a live endpoint,
the host, health; else the longest named prefix's CIDR identity, else
world) and CIDR rules judged on the address itself. The ipcache the
datapath reads is only what the agent's writes (replayed in its order,
with its delete guards) left there.

A second phase changes the world in one of three ways - some remote
identities leave (their addresses go back to CIDR/world), the rule file is
replaced, or a second file is added - and checks packets again, so that
map deletions are exercised too. The policy map must hold exactly the
engine's entries, and those a fresh computation's, after every change.

Deterministic cases follow: port-range and CIDR edges with the verdicts
written out, a recycled identity number, and two agent bugs this property
found, checked through the real `agent/enforcement.py`: a CIDR rule naming
a pod's own address must not take over its identity, and naming a /0 must
not change other pods' verdicts. The ipcache writes go through the agent's
own `IpCache` (endpoint > host > CIDR claims).
"""

import ipaddress
import itertools
import json
import logging
import random
from collections import Counter

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import labels as L
from agent.enforcement import flags_of, host_prefix
from agent.ipcache import CIDR, ENDPOINT, HOST, IpCache
from agent.policy.endpoint import EndpointPolicy
from agent.policy.parse import parse_text
from agent.policy.ports import PROTOCOLS
from agent.policy.repository import Repository
from agent.policy.selector import CIDRSelector
from agent.policy.selectorcache import SelectorCache
from agent.policy.verdict import ALLOW, reference_verdict, verdict
from datapath import bpffs
from datapath.loader import Datapath
from datapath.maps.fields import PROTO_NAMES
from tests.datapath import packets as tr
from tests.policy import test_properties as tp

pytestmark = pytest.mark.kernel

EP = 9
IFINDEX = 1  # lo: exists in our netns; no filter of ours on it
POD_V4, POD_V6 = "10.1.2.50", "fd00:1::50"
HOST_V4, HOST_V6 = "192.168.1.1", "fd00:ffff::1"
HEALTH_V4 = "10.1.2.99"
# Remote endpoints' addresses: most inside the prefixes rules name.
EP_V4 = ("10.1.2.10", "10.1.2.11", "10.1.3.7", "10.3.0.5", "172.16.0.9", "100.64.0.1", "192.168.9.9")
EP_V6 = ("2001:db8:1::10", "2001:db8::20", "fd00:1::10", "fd00:2::30", "2a00::1")
# Outside the cluster, so resolved to a CIDR identity or world.
OUTSIDE = ("10.1.2.3", "10.1.9.9", "10.200.0.1", "172.16.5.5", "192.168.7.7", "8.8.8.8", "1.1.1.1",
           "2001:db8::1", "2001:db8:1::5", "2001:db8:1::6", "2001:dead::1", "fd00:1::99", "::1")
PREFIXES = tp.PREFIXES + ("10.1.2.3/32", "172.16.0.0/12", "10.1.2.128/25", "2001:db8:1::/48",
                          "2001:db8:1::5/128", "fd00::/16")
# Prefixes equal to a remote endpoint's or the host's own address: the
# endpoint's or host's identity must win (agent/ipcache.py).
OWNER_PREFIXES = ("10.1.2.10/32", "fd00:1::10/128", "192.168.1.1/32")
PREFIXES += OWNER_PREFIXES
EDGE_PORTS = (1, 2, 53, 79, 80, 443, 1023, 1024, 4095, 4096, 8080, 32767, 32768, 65534, 65535)
PROTO_ICMP = {4: tr.ICMP, 6: tr.ICMPV6}
GRE = 47

# -- policy strategies (the building blocks of tests/policy/test_properties) --


def cidr_text(net_text):
    """The prefix as written: as is, with host bits set (the parser masks
    them), or a bare address for a host prefix."""
    net = ipaddress.ip_network(net_text)
    options = [st.just(net_text)]
    if net.prefixlen == net.max_prefixlen:
        options.append(st.just(str(net.network_address)))
    elif net.num_addresses > 2:
        options.append(st.integers(1, min(net.num_addresses - 1, 2**32)).map(
            lambda off: "%s/%d" % (net.network_address + off, net.prefixlen)))
    return st.one_of(options)


prefix_text = st.sampled_from(PREFIXES).flatmap(cidr_text)


@st.composite
def cidr_set(draw):
    cidr = draw(st.sampled_from(PREFIXES))
    net = ipaddress.ip_network(cidr)
    inside = [p for p in PREFIXES if ipaddress.ip_network(p).version == net.version
              and ipaddress.ip_network(p).subnet_of(net) and p != cidr]
    out = {"cidr": draw(cidr_text(cidr))}
    if inside:
        out["except"] = draw(st.lists(st.sampled_from(inside).flatmap(cidr_text), max_size=2))
    return out


@st.composite
def wide_port(draw):
    """Any port, ranges across block boundaries up to 65535, numeric strings."""
    port = draw(st.one_of(st.sampled_from((0,) + EDGE_PORTS), st.integers(0, 65535)))
    out = {"port": port}
    if port and draw(st.booleans()):
        span = draw(st.one_of(st.sampled_from([0, 1, 2, 3, 7, 8, 255, 256, 1000]), st.integers(0, 65535)))
        out["endPort"] = min(65535, port + span)
    if draw(st.integers(0, 7)) == 0:
        out["port"] = str(port)
    proto = draw(st.sampled_from([None, "TCP", "UDP", "SCTP", "ANY"]))
    if proto:
        out["protocol"] = proto
    return out


port_rule = st.one_of(
    st.fixed_dictionaries({"ports": st.lists(wide_port(), min_size=1, max_size=3)}),
    st.just({}), st.just({"ports": []}))  # no ports: allows nothing


def item(prefix):
    return st.fixed_dictionaries({}, optional={
        prefix + "Endpoints": st.lists(tp.selector, max_size=2),
        prefix + "CIDR": st.lists(prefix_text, max_size=2),
        prefix + "CIDRSet": st.lists(cidr_set(), max_size=2),
        prefix + "Entities": st.lists(st.sampled_from(["world", "host", "cluster", "all"]), max_size=2),
        "toPorts": st.lists(port_rule, max_size=2),
    })


spec = st.fixed_dictionaries({"endpointSelector": tp.selector}, optional={
    "ingress": st.lists(item("from"), max_size=3), "ingressDeny": st.lists(item("from"), max_size=2),
    "egress": st.lists(item("to"), max_size=3), "egressDeny": st.lists(item("to"), max_size=2)})
wide_policy = st.fixed_dictionaries({"namespace": st.sampled_from(["", "n1", "n2"]),
                                     "specs": st.lists(spec, min_size=1, max_size=2)})
# Half from test_properties' own strategy (small port sets), half wider.
policies = st.lists(st.one_of(tp.policy, wide_policy), min_size=1, max_size=3)


def render(pols, fmt, name_prefix="p"):
    """Policies as text: a JSON stream (test_properties.to_text), a YAML
    stream, or one YAML `List`."""
    docs = [json.loads(d) for d in tp.to_text(pols).split("\n---\n")]
    for d in docs:
        d["metadata"]["name"] = name_prefix + d["metadata"]["name"][1:]
    if fmt == "json":
        return "\n---\n".join(json.dumps(d) for d in docs)
    if fmt == "yaml":
        return yaml.safe_dump_all(docs)
    return yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": docs})


# -- the world: identities and the ipcache, as the agent builds them ------------


class World:
    """Identities (number -> labels), who is at which address, and the
    ipcache writes the agent makes (agent/enforcement.py), in its order.

    `resolve()` answers from ownership, not from what was written: an
    address of a live endpoint, the host or health has that identity; any
    other address the CIDR identity of the longest prefix the rules name,
    else world. The datapath only agrees if the writes leave the ipcache
    saying the same.
    """

    def __init__(self, dp, local_labels, endpoints, numbers):
        self.dp = dp
        self.ids = dict(L.RESERVED_IDENTITIES)
        self.by_labels = {}
        numbers = iter(numbers)
        for lbls in [local_labels] + [lbls for lbls, _ in endpoints]:
            if lbls not in self.by_labels:
                self.by_labels[lbls] = n = next(numbers)
                self.ids[n] = lbls
        self.local_id = self.by_labels[local_labels]
        self.remote = {}  # remote endpoint address -> identity, once attached
        self.pending = {}  # remote endpoint address -> identity, not attached yet
        for lbls, addrs in endpoints:
            for a in addrs:
                self.pending[a] = self.by_labels[lbls]
        self.addresses = set(self.pending)  # every endpoint address, attached or gone
        self.fixed = {HOST_V4: L.ID_HOST, HOST_V6: L.ID_HOST, HEALTH_V4: L.ID_HEALTH,
                      POD_V4: self.local_id, POD_V6: self.local_id}
        self.cidr = {}  # prefix text -> CIDR identity, like Enforcement._cidr
        self.ipc = IpCache(dp.ipcache)  # the agent's own arbitration of claims
        self.cidr_numbers = itertools.count(L.MIN_CIDR_IDENTITY + random.randrange(0, 1 << 20))

    def attach_fixed(self):
        """refresh_host() and the local endpoint's attach_endpoint()."""
        for address, ident in self.fixed.items():
            priority = HOST if ident in (L.ID_HOST, L.ID_HEALTH) else ENDPOINT
            self.ipc.claim(host_prefix(address), ("fixed", address), priority, ident)

    def attach(self, ident):
        """attach_endpoint() of the remote endpoints with this identity."""
        for address, owner in list(self.pending.items()):
            if owner == ident:
                self.remote[address] = self.pending.pop(address)
                self.ipc.claim(host_prefix(address), ("endpoint", address), ENDPOINT, ident)

    def detach(self, ident):
        """detach_endpoint(): the address leaves the ipcache if still its."""
        addresses = [a for a, owner in self.remote.items() if owner == ident]
        for address in addresses:
            del self.remote[address]
            self.ipc.release(host_prefix(address), ("endpoint", address))
        return addresses

    def sync_cidr(self, repo, cache):
        """Enforcement._sync_cidr_identities: an identity and an ipcache
        entry per prefix the rules name; a gone prefix leaves the ipcache if
        the entry is still its (its identity stays known, as during the
        allocator's grace)."""
        wanted = {str(p) for p in repo.cidr_prefixes() if p.prefixlen > 0}  # /0 is world
        for prefix in sorted(wanted - set(self.cidr)):
            lbls = L.cidr_labels(ipaddress.ip_network(prefix))
            number = self.by_labels.get(lbls)
            if number is None:
                number = self.by_labels[lbls] = next(self.cidr_numbers)
                self.ids[number] = lbls
                cache.update_identities(added={number: lbls})
            self.cidr[prefix] = number
            self.ipc.claim(prefix, "cidr", CIDR, number)
        for prefix in sorted(set(self.cidr) - wanted):
            self.cidr.pop(prefix)
            self.ipc.release(prefix, "cidr")

    def owners(self):
        return {**self.remote, **self.fixed}

    def resolve(self, address):
        """(identity, labels, address for CIDR rules or None)."""
        address = str(ipaddress.ip_address(address))
        owner = self.owners().get(address)
        if owner is not None:
            return owner, self.ids[owner], None
        addr = ipaddress.ip_address(address)
        best = None
        for prefix, ident in self.cidr.items():
            net = ipaddress.ip_network(prefix)
            if addr.version == net.version and addr in net and (best is None or net.prefixlen > best[0]):
                best = (net.prefixlen, ident)
        ident = best[1] if best else L.ID_WORLD
        return ident, self.ids[ident], address

    def candidates(self):
        """Remote addresses worth probing: endpoints' (attached or gone),
        host, health, outside ones, and the edges of every named prefix
        (first, last, and just outside it)."""
        out = self.addresses | set(self.fixed) | set(OUTSIDE)
        for prefix in self.cidr:
            net = ipaddress.ip_network(prefix)
            if net.prefixlen == 0:
                continue
            first, last = net.network_address, net.broadcast_address
            out |= {str(first), str(last)}
            if int(first) > 0:
                out.add(str(first - 1))
            if int(last) < (2**net.max_prefixlen - 1):
                out.add(str(last + 1))
        return sorted(out - {POD_V4, POD_V6})


def peer_selects(sel, ident, labels, outside_address):
    """Does a rule's peer select this remote? (Only to aim packets; the
    verdict is reference_verdict's.)"""
    if sel.wildcard:
        return True
    if isinstance(sel, CIDRSelector) and outside_address is not None:
        return (ident == L.ID_WORLD and sel.prefix.prefixlen == 0) or sel.contains(
            ipaddress.ip_network(outside_address))
    return sel.matches(ident, labels)


def port_edges(rules):
    out = {0, 1, 65535}
    for rule in rules:
        for it in rule.items:
            for p in it.ports or ():
                end = p.end_port if p.end_port is not None else p.port
                out |= {p.port - 1, p.port, p.port + 1, end - 1, end, end + 1}
    return sorted(x for x in out if 0 <= x <= 65535)


# -- packets --------------------------------------------------------------------


class Checker:
    """Runs packets through the programs and compares with the reference."""

    def __init__(self, dp, world, events, stats):
        self.dp, self.world, self.events, self.stats = dp, world, events, stats
        self.ct = set()  # connections the datapath holds (as ct keys, both ways)
        self.sports = itertools.count(20000 + random.randrange(0, 20000))
        self.want_events = []
        self.want_counts = Counter()

    def flow(self, data, rules, ep):
        """A random new connection; two in three aimed at a rule item that
        selects the endpoint (its direction, a remote one of its peers
        selects, a protocol and a port at or next to an edge of its ports),
        so that rules decide often and ranges are probed at their ends."""
        w = self.world
        candidates = w.candidates()
        items = [it for rule in rules if rule.endpoint_selector.matches(None, ep.labels) for it in rule.items]
        item = data.draw(st.sampled_from(items), "item") if items and data.draw(st.integers(0, 2), "aim") else None
        if item is not None:
            direction = item.direction
            candidates = [a for a in candidates if any(peer_selects(p, *w.resolve(a)) for p in item.peers)] \
                or candidates
        else:
            direction = data.draw(st.sampled_from(["ingress", "egress"]), "direction")
        address = data.draw(st.sampled_from(candidates), "remote")
        family = ipaddress.ip_address(address).version
        protos = [tr.TCP, tr.TCP, tr.UDP, tr.UDP, tr.SCTP, PROTO_ICMP[family], GRE]
        edges = port_edges(rules)
        if item is not None and item.ports:
            spec = data.draw(st.sampled_from(item.ports), "port spec")
            protos = list(PROTOCOLS[spec.protocol])
            end = spec.end_port if spec.end_port is not None else spec.port
            edges = [x for x in (spec.port - 1, spec.port, spec.port + 1, end - 1, end, end + 1) if 0 <= x <= 65535]
        proto = data.draw(st.sampled_from(protos), "proto")
        dport = 0
        if proto in (tr.TCP, tr.UDP, tr.SCTP):
            dport = data.draw(st.one_of(st.sampled_from(edges), st.integers(0, 65535)), "dport")
        return self.check(rules, ep, direction, address, proto, dport)

    def check(self, rules, ep, direction, address, proto, dport=0):
        """Run one new connection; returns the verdict (ALLOW or the drop
        reason) after checking it equals the reference's."""
        w = self.world
        family = ipaddress.ip_address(address).version
        sport = next(self.sports)
        if proto == GRE:
            sport = dport = 0  # no ports: the datapath sees 0
        elif proto in PROTO_ICMP.values():
            dport = sport  # the echo id: both ports to the datapath
        local = POD_V4 if family == 4 else POD_V6
        src, dst = (address, local) if direction == "ingress" else (local, address)
        key = (src, dst, sport, dport, proto)
        if key in self.ct or (dst, src, dport, sport, proto) in self.ct:
            self.dp.ct.flush(EP)
            self.ct.clear()
        remote_id, remote_labels, cidr_of_remote = w.resolve(address)
        want = reference_verdict(rules, ep.labels, remote_id, remote_labels, direction, proto, dport,
                                 cidr_of_remote=cidr_of_remote)
        frame = tr.packet(src, dst, proto, 0 if proto in PROTO_ICMP.values() else sport, dport)
        got = tr.run(self.dp, direction, frame, ifindex=IFINDEX)
        if got != (tr.TC_ACT_UNSPEC if want == ALLOW else tr.TC_ACT_SHOT):
            entries = verdict(ep.entries, ep.enforced, direction, remote_id, proto, dport)
            raise AssertionError(
                "datapath %s, reference %s (entries say %s) for %s %s %s->%s proto %d dport %d; "
                "remote identity %d %s; local %s; enforced %s; entries %s"
                % ("passed" if got == tr.TC_ACT_UNSPEC else "dropped", want, entries, direction,
                   ipaddress.ip_address(address).version, src, dst, proto, dport, remote_id,
                   sorted(map(L.format_label, remote_labels)), sorted(map(L.format_label, ep.labels)),
                   ep.enforced, sorted(ep.entries)))
        self.stats[direction, proto, want, ep.enforced[direction]] += 1
        self.want_counts[direction, want] += 1
        if want == ALLOW:
            self.ct.add(key)
        else:
            ids = (remote_id, w.local_id) if direction == "ingress" else (w.local_id, remote_id)
            self.want_events.append((EP, *ids, str(ipaddress.ip_address(src)), str(ipaddress.ip_address(dst)),
                                     sport, dport, PROTO_NAMES.get(proto, str(proto)), direction, want))
        return want

    def settle(self):
        """The drop events and per-reason counters agree with the verdicts."""
        while self.dp.poll_events(0):
            pass
        got = [(e["epID"], e["srcIdentity"], e["dstIdentity"], e["src"], e["dst"], e["sport"], e["dport"],
                e["proto"], e["direction"], e["reason"]) for e in self.events]
        self.events.clear()
        got, want = Counter(got), Counter(self.want_events)
        assert got == want, "drop events (ep, src id, dst id, src, dst, sport, dport, proto, dir, reason) " \
            "the datapath sent but the reference did not expect: %s; expected but not sent: %s" % (
                sorted(got - want), sorted(want - got))
        self.want_events = []
        stats = self.dp.metrics.stats(EP)
        for direction in ("ingress", "egress"):
            s = stats[direction]
            assert s["packets"] == self.want_counts[direction, ALLOW]
            assert s["drops"]["policy-deny"] == self.want_counts[direction, "policy-deny"]
            assert s["drops"]["policy-denied"] == self.want_counts[direction, "policy-denied"]
            assert s["drops"]["invalid-packet"] == 0


# -- the test -------------------------------------------------------------------

STATS = Counter()


@pytest.fixture(scope="module")
def loaded(require_root):
    """One datapath for the module, under a private bpffs root removed
    (pins and all) even when a test fails; drop events subscribed."""
    root = "/sys/fs/bpf/cilium-cni-test-%08x" % random.getrandbits(32)
    dp = Datapath(root)
    events = []
    try:
        dp.load()
        dp.open_events(events.append)
        yield dp, events
    finally:
        dp.close()
        bpffs.remove_tree(root)


def reset(dp, events):
    dp.remove_endpoint(IFINDEX, EP)  # its policy entries, connections, counters
    for prefix in dp.ipcache.entries():
        dp.ipcache.delete(prefix)
    dp.ct.flush()
    while dp.poll_events(0):
        pass
    events.clear()


def check_realized(dp, ep, world, repo, cache):
    """The kernel holds exactly the engine's entries, and the entries built
    by deltas are those of a fresh computation (no stale identity left)."""
    assert {tuple(e) for e, _ in dp.policy.entries(EP)} == ep.entries == ep.realized
    fresh = EndpointPolicy(EP + 1, ep.labels, repo, cache, lambda *a: None)
    try:
        assert ep.entries == fresh.entries and ep.enforced == fresh.enforced
    finally:
        fresh.close()
    assert dp.endpoints.infos()[IFINDEX] == (EP, world.local_id, flags_of(ep.enforced))


def build(dp, text, local, endpoints, numbers, policy_first=True, early=lambda remote_ids: ()):
    """The agent's flow: identities, ipcache, rules, endpoint policy, deltas.

    `text`: policy text for the parser, or rules already parsed (a list).
    `endpoints`: (labels, addresses) of remote endpoints; `numbers` the
    identity numbers of the distinct label sets, the local one's first;
    `early(remote_ids)`: the remote identities known before the rules and
    the endpoint policy (the others arrive as deltas after them).
    """
    world = World(dp, local, endpoints, numbers)
    rules = parse_text(text, "gen.yaml") if isinstance(text, str) else list(text)
    remote_ids = sorted(set(world.pending.values()))
    early = set(early(remote_ids))
    known = {i: lbls for i, lbls in world.ids.items() if i < L.MIN_ENDPOINT_IDENTITY or i in early
             or i == world.local_id}
    cache, repo = SelectorCache(known), Repository()
    world.attach_fixed()
    for ident in sorted(early):
        world.attach(ident)

    def apply(adds, deletes, enforced):
        dp.policy.update(EP, adds, deletes)
        dp.endpoints.set(IFINDEX, EP, world.local_id, flags=flags_of(enforced))

    if policy_first:
        repo.replace_source("gen.yaml", rules)
        world.sync_cidr(repo, cache)
        ep = EndpointPolicy(EP, local, repo, cache, apply)
    else:
        ep = EndpointPolicy(EP, local, repo, cache, apply)
        repo.replace_source("gen.yaml", rules)
        world.sync_cidr(repo, cache)
        ep.regenerate()
    late = {i: world.ids[i] for i in remote_ids if i not in known}
    cache.update_identities(added=late)
    for ident in remote_ids:
        if ident not in early:  # (the local identity is known, but not its other pods)
            world.attach(ident)
    return world, rules, cache, repo, ep


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    pols=policies,
    local=tp.label_set,
    endpoints=st.lists(st.tuples(tp.label_set, st.one_of(
        st.tuples(st.sampled_from(EP_V4)), st.tuples(st.sampled_from(EP_V4), st.sampled_from(EP_V6)))),
        max_size=5, unique_by=lambda e: e[1][0]),
    numbers=st.lists(st.one_of(st.sampled_from([256, 257, 511, 4096, 65280, 65535]),
                               st.integers(L.MIN_ENDPOINT_IDENTITY, L.MAX_ENDPOINT_IDENTITY)),
                     min_size=6, max_size=6, unique=True),
    policy_first=st.booleans(),
    fmt=st.sampled_from(["json", "yaml", "list"]),
    change=st.sampled_from(["identities-leave", "replace-file", "add-file"]),
    data=st.data(),
)
def test_datapath_verdict_equals_rules(loaded, pols, local, endpoints, numbers, policy_first, fmt, change, data):
    dp, events = loaded
    reset(dp, events)
    # An IPv6 address drawn for two endpoints stays with the first.
    seen, eps = set(), []
    for lbls, addrs in endpoints:
        addrs = tuple(a for a in addrs if a not in seen)
        seen |= set(addrs)
        eps.append((lbls, addrs))
    world, rules, cache, repo, ep = build(
        dp, render(pols, fmt), local, eps, numbers, policy_first,
        lambda ids: data.draw(st.sets(st.sampled_from(ids)) if ids else st.just(set()), "early"))
    check_realized(dp, ep, world, repo, cache)
    checker = Checker(dp, world, events, STATS)
    for _ in range(data.draw(st.integers(12, 24), "packets")):
        checker.flow(data, rules, ep)
    checker.settle()

    # Phase 2: the world changes; entries are deleted as well as added.
    if change == "identities-leave":
        remote_ids = sorted(set(world.remote.values()) - {world.local_id})
        gone = data.draw(st.sets(st.sampled_from(remote_ids)) if remote_ids else st.just(set()), "gone")
        left = {}
        for ident in sorted(gone):
            left[ident] = world.detach(ident)
        cache.update_identities(removed=gone)
        for ident in gone:
            del world.by_labels[world.ids.pop(ident)]
        # After the allocator's grace, a number goes to new labels (pods at
        # the same addresses): a stale entry of the old identity would now
        # decide their packets.
        if gone and data.draw(st.booleans(), "reuse"):
            for ident in sorted(gone):
                lbls = data.draw(tp.label_set.filter(lambda x: x not in world.by_labels), "new labels")
                world.by_labels[lbls], world.ids[ident] = ident, lbls
                cache.update_identities(added={ident: lbls})
                world.pending.update(dict.fromkeys(left[ident], ident))
                world.attach(ident)
    else:
        more = data.draw(policies, "more")
        if change == "replace-file":
            rules = parse_text(render(more, fmt), "gen.yaml")
            repo.replace_source("gen.yaml", rules)
        else:
            added = parse_text(render(more, fmt, name_prefix="q"), "more.yaml")
            repo.replace_source("more.yaml", added)
            rules = rules + added
        world.sync_cidr(repo, cache)
        ep.regenerate()
    check_realized(dp, ep, world, repo, cache)
    for _ in range(data.draw(st.integers(8, 16), "packets")):
        checker.flow(data, rules, ep)
    checker.settle()
    STATS["examples"] += 1
    STATS["entries"] += len(ep.entries)


def test_enough_cases_ran():
    """Runs after the property (file order): thousands of packets, all kinds."""
    if not STATS["examples"]:
        pytest.skip("the property did not run (deselected)")
    packets = sum(v for k, v in STATS.items() if isinstance(k, tuple))
    assert STATS["examples"] >= 250 and packets >= 5000, STATS
    by_verdict = Counter()
    for k, v in STATS.items():
        if isinstance(k, tuple):
            by_verdict[k[2], "enforced" if k[3] else "not enforced"] += v
    print(dict(by_verdict))
    # Rules decide often: denies, and allows where the default is deny (a
    # deny section enforces its direction too: no deny where not enforced).
    assert not by_verdict["policy-deny", "not enforced"]
    for kind in ((ALLOW, "enforced"), ("policy-deny", "enforced"), ("policy-denied", "enforced"),
                 (ALLOW, "not enforced")):
        assert by_verdict[kind] >= 100, by_verdict


# -- deterministic cases ------------------------------------------------------------

EDGES = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: edges, namespace: n1}
specs:
- endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "65534", endPort: 65535, protocol: TCP}, {port: 1000, endPort: 1030}]}]
  - fromCIDRSet: [{cidr: 10.0.0.0/8, except: [10.1.0.0/16]}]
  ingressDeny:
  - fromCIDR: [10.7.7.7/16]
    toPorts: [{ports: [{port: 1024, protocol: UDP}]}]
- endpointSelector: {}
  egress:
  - toCIDR: [2001:db8:1::5]
  - toEntities: [host]
    toPorts: [{ports: [{port: 0, protocol: SCTP}]}]
  egressDeny:
  - toEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: 53}]}]
"""
EDGE_CASES = [  # direction, remote, proto, dport, verdict: written out, not computed
    ("ingress", "10.1.2.10", tr.TCP, 65535, ALLOW),  # client, last port of the range
    ("ingress", "10.1.2.10", tr.TCP, 65534, ALLOW),
    ("ingress", "10.1.2.10", tr.TCP, 65533, "policy-denied"),
    ("ingress", "10.1.2.10", tr.UDP, 65535, "policy-denied"),  # 65534-65535 is TCP only
    ("ingress", "10.1.2.10", tr.SCTP, 1000, ALLOW),  # 1000-1030 for TCP, UDP and SCTP
    ("ingress", "10.1.2.10", tr.UDP, 1030, ALLOW),
    ("ingress", "10.1.2.10", tr.UDP, 1031, "policy-denied"),
    ("ingress", "10.1.2.10", tr.UDP, 999, "policy-denied"),
    ("ingress", "10.1.2.10", tr.ICMP, 0, "policy-denied"),  # toPorts never allow ICMP
    ("ingress", "10.2.0.1", tr.UDP, 1024, ALLOW),  # 10/8 minus 10.1/16, any port
    ("ingress", "10.7.255.255", tr.UDP, 1024, "policy-deny"),  # 10.7/16 (host bits masked) denies
    ("ingress", "10.7.255.255", tr.TCP, 1024, ALLOW),
    ("ingress", "10.8.0.0", tr.UDP, 1024, ALLOW),  # just past the deny prefix
    ("ingress", "10.1.9.9", tr.TCP, 80, "policy-denied"),  # in the except: not allowed
    ("ingress", "10.255.255.255", tr.ICMP, 0, ALLOW),  # last address of 10/8
    ("ingress", "11.0.0.0", tr.ICMP, 0, "policy-denied"),  # first past it: world
    ("egress", "2001:db8:1::5", tr.ICMPV6, 0, ALLOW),  # a bare address is a /128
    ("egress", "2001:db8:1::4", tr.ICMPV6, 0, "policy-denied"),
    ("egress", HOST_V4, tr.SCTP, 65535, ALLOW),  # port 0: every port of the protocol
    ("egress", HOST_V6, tr.TCP, 1, "policy-denied"),
    ("egress", "10.1.2.10", tr.UDP, 53, "policy-deny"),  # deny on port 53 for every protocol
    ("egress", "10.1.2.10", tr.SCTP, 53, "policy-deny"),
    ("egress", "10.1.2.10", tr.UDP, 54, "policy-denied"),
    ("ingress", "fd00:1::10", GRE, 0, "policy-denied"),  # an endpoint in no rule
]


@pytest.fixture
def case(datapath):
    """build() on the test's own datapath, with its drop events and a
    Checker; the datapath fixture removes its pins."""
    events = []
    datapath.open_events(events.append)

    def make(text, local, endpoints, numbers, policy_first=True):
        world, rules, cache, repo, ep = build(datapath, text, local, endpoints, numbers, policy_first)
        check_realized(datapath, ep, world, repo, cache)
        return Checker(datapath, world, events, Counter()), world, rules, cache, repo, ep

    return make


@pytest.mark.parametrize("policy_first", [True, False])
def test_port_range_and_cidr_edges(case, policy_first):
    ns = ("k8s", L.NAMESPACE_KEY, "n1")
    web, client = frozenset({ns, ("k8s", "app", "web")}), frozenset({ns, ("k8s", "app", "client")})
    checker, _, rules, _, _, ep = case(EDGES, web, [(client, ("10.1.2.10",)), (frozenset(), ("fd00:1::10",))],
                                       [0xFF01, 0x1234, 0x0100], policy_first)
    got = [checker.check(rules, ep, d, a, p, port) for d, a, p, port, _ in EDGE_CASES]
    assert got == [want for *_, want in EDGE_CASES]
    checker.settle()


def test_recycled_identity_number_inherits_no_entries(case):
    """An identity leaves and its number goes to other labels (after the
    allocator's grace): the entries of the old labels must be gone."""
    text = """{"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "a"},
               "spec": {"endpointSelector": {"matchLabels": {"app": "a"}},
                        "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "b"}}]}]}}"""
    a, b, c = (frozenset({("cni", "app", x)}) for x in "abc")
    checker, world, rules, cache, _, ep = case(text, a, [(b, ("10.1.2.10",))], [300, 40000])
    assert checker.check(rules, ep, "ingress", "10.1.2.10", tr.TCP, 80) == ALLOW
    addresses = world.detach(40000)
    cache.update_identities(removed=[40000])
    world.ids[40000] = c
    cache.update_identities(added={40000: c})
    world.pending.update(dict.fromkeys(addresses, 40000))
    world.attach(40000)
    assert ep.entries == set()
    assert checker.check(rules, ep, "ingress", "10.1.2.10", tr.TCP, 80) == "policy-denied"
    checker.settle()


# -- known agent bugs, through the real agent/enforcement.py ------------------------


@pytest.fixture
def agent(datapath, tmp_path):
    """An Enforcement (the agent's wiring) over the test's datapath."""
    from agent.enforcement import Enforcement
    from agent.store import Store

    store = Store(str(tmp_path / "state"))
    try:
        yield Enforcement(store, datapath, logging.getLogger("test"))
    finally:
        store.close()


def agent_endpoint(agent, ep_id, ifindex, address, app):
    ep = {"id": ep_id, "host": {"ifindex": ifindex}, "interface": {"addresses": [address]}}
    labels = frozenset({("cni", "app", app)})
    agent.attach_endpoint(ep, labels)
    return ep, labels


def agent_verdict(agent, dp, local, remote, direction, remote_address, proto, dport):
    """(datapath verdict, reference verdict) of a new connection of the
    endpoint at ifindex 1 (ALLOW or a drop reason)."""
    events = []
    dp.open_events(events.append)
    dp.ct.flush()
    pod_address = local[0]["interface"]["addresses"][0].split("/")[0]
    src, dst = (remote_address, pod_address) if direction == "ingress" else (pod_address, remote_address)
    passed = tr.run(dp, direction, tr.packet(src, dst, proto, 40000, dport), ifindex=IFINDEX) == tr.TC_ACT_UNSPEC
    while dp.poll_events(0):
        pass
    got = ALLOW if passed else events[-1]["reason"]
    if remote is None:
        rid, rlabels, address = L.ID_WORLD, L.RESERVED_IDENTITIES[L.ID_WORLD], remote_address
    else:
        rid, rlabels, address = remote[0]["identity"], remote[1], None
    return got, reference_verdict(agent.repo.rules(), local[1], rid, rlabels, direction, proto, dport,
                                  cidr_of_remote=address)


def cnp(name, app, section):
    return {"source": name + ".yaml", "text": json.dumps({
        "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": name},
        "spec": {"endpointSelector": {"matchLabels": {"app": app}}, **section}})}


def test_cidr_rule_naming_a_pod_address_keeps_its_identity(agent, datapath):
    """Pod a admits pods app=b. A policy for some other pod c names b's
    exact address in fromCIDR: b must still be b (identity, not CIDR) to a,
    and stay in the ipcache once that policy is deleted."""
    a = agent_endpoint(agent, 9, IFINDEX, "10.1.2.50/24", "a")
    b = agent_endpoint(agent, 10, 100000, "10.1.2.10/24", "b")
    agent.import_files([cnp("a", "a", {"ingress": [{"fromEndpoints": [{"matchLabels": {"app": "b"}}]}]})])
    assert agent_verdict(agent, datapath, a, b, "ingress", "10.1.2.10", tr.TCP, 80) == (ALLOW, ALLOW)
    agent.import_files([cnp("c", "c", {"ingress": [{"fromCIDR": ["10.1.2.10/32"]}]})])
    assert datapath.ipcache.entries()["10.1.2.10/32"] == b[0]["identity"]
    assert agent_verdict(agent, datapath, a, b, "ingress", "10.1.2.10", tr.TCP, 80) == (ALLOW, ALLOW)
    agent.delete_policy(name="c")
    assert datapath.ipcache.entries().get("10.1.2.10/32") == b[0]["identity"]
    assert agent_verdict(agent, datapath, a, b, "ingress", "10.1.2.10", tr.TCP, 80) == (ALLOW, ALLOW)


def test_zero_prefix_named_for_another_pod_changes_no_verdict(agent, datapath):
    """Pod a may go anywhere but to ::/0, which also matches world (2), so
    IPv4 world traffic too (docs/policy.md). A policy of another pod
    naming 0.0.0.0/0 must not change a's verdicts."""
    a = agent_endpoint(agent, 9, IFINDEX, "10.1.2.50/24", "a")
    agent.import_files([cnp("a", "a", {"egress": [{"toEntities": ["all"]}],
                                        "egressDeny": [{"toCIDR": ["::/0"]}]})])
    before = agent_verdict(agent, datapath, a, None, "egress", "8.8.8.8", tr.TCP, 443)
    assert before == ("policy-deny", "policy-deny")
    agent.import_files([cnp("b", "b", {"egress": [{"toCIDR": ["0.0.0.0/0"]}]})])
    assert agent_verdict(agent, datapath, a, None, "egress", "8.8.8.8", tr.TCP, 443) == before
