"""Property: the loaded programs decide every packet as the reference
evaluation of docs/policy.md does.

Each example draws an endpoint (identity, enforcement flags), a set of
contract entries, and a sequence of packets (IPv4/IPv6; TCP, UDP, SCTP,
ICMP echo and others, ICMPv6 echo and neighbour discovery, GRE, an IPv6
hop-by-hop header, ARP, non-first fragments, truncated L4 headers), some of
them replies of earlier ones. The packets run through `from_container` or
`to_container` with BPF_PROG_TEST_RUN (ifindex 1 = lo, where the test's
endpoints entry lives and no filter of ours is attached). The reference
below models the whole contract: ipcache longest-prefix match (miss =
world), connection tracking (a packet of a connection or its reply passes;
only allowed new connections create one), the 3-step verdict, ARP/ND
always passing, and invalid packets dropped only where enforced. Verdicts
and the drop events (identities, addresses, ports, reason) must match.
"""

import ipaddress
import random
from collections import Counter
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datapath import bpffs
from datapath.loader import Datapath
from tests.datapath import packets as tr

pytestmark = pytest.mark.kernel

EP = 7
IFINDEX = 1  # lo: always exists in the test's netns, carries none of our filters

IPCACHE = {
    "10.0.0.0/8": 300,
    "10.1.0.0/16": 301,
    "10.1.2.0/24": 302,
    "10.1.2.3/32": 303,
    "fd00::/16": 304,
    "fd00:1::/64": 305,
    "fd00:1::5/128": 306,
}
POD_V4, POD_V6 = "10.9.9.9", "fd09::9"
REMOTES_V4 = ["10.1.2.3", "10.1.2.4", "10.1.9.9", "10.7.0.1", "192.168.0.1", "8.8.8.8"]
REMOTES_V6 = ["fd00:1::5", "fd00:1::6", "fd00:2::1", "2001:db8::1"]
IDENTITIES = [0, 1, 2, 300, 301, 302, 303, 304, 305, 306, 999]
ENTRY_PROTOS = [0, 1, 6, 17, 58, 132, 47]
PORTS = [0, 1, 22, 53, 80, 443, 1024, 8080, 8443, 32768, 65535]
DEFAULT_TRACKED = 0

_NETS = sorted(((ipaddress.ip_network(c), i) for c, i in IPCACHE.items()), key=lambda x: -x[0].prefixlen)


# -- the reference ------------------------------------------------------------


def identity_of(addr: str) -> int:
    ip = ipaddress.ip_address(addr)
    for net, identity in _NETS:  # longest prefix first
        if ip.version == net.version and ip in net:
            return identity
    return 2  # world


def entry_matches(entry, direction, remote, proto, dport, deny):
    e_dir, e_id, e_proto, e_port, e_plen, e_deny = entry
    if e_deny != deny or e_dir != direction or e_id not in (remote, 0):
        return False
    if e_proto == 0:
        return True
    shift = 16 - e_plen
    return e_proto == proto and (e_port >> shift) == (dport >> shift)


def reference_verdict(entries, flags, direction, remote, proto, dport):
    """None to allow, else the drop reason (docs/policy.md, steps 1-3)."""
    if any(entry_matches(e, direction, remote, proto, dport, True) for e in entries):
        return "policy-deny"
    if any(entry_matches(e, direction, remote, proto, dport, False) for e in entries):
        return None
    enforced = flags & (1 if direction == "ingress" else 2)
    return "policy-denied" if enforced else None


@dataclass(frozen=True)
class Pkt:
    direction: str
    family: int
    remote: str
    proto: int  # IP protocol, or -1 for ARP
    sport: int
    dport: int
    kind: str = "plain"  # plain | echo-request | echo-reply | icmp-other | nd | fragment | truncated

    @property
    def src(self):
        local = POD_V4 if self.family == 4 else POD_V6
        return local if self.direction == "egress" else self.remote

    @property
    def dst(self):
        local = POD_V4 if self.family == 4 else POD_V6
        return self.remote if self.direction == "egress" else local

    def ports(self):
        """(sport, dport) as the datapath sees them."""
        if self.kind in ("echo-request", "echo-reply"):
            return self.dport, self.dport  # the echo id both ways
        if self.kind in ("icmp-other", "fragment", "truncated") or self.proto not in (6, 17, 132):
            return 0, 0
        return self.sport, self.dport

    def reply(self):
        kind = {"echo-request": "echo-reply", "echo-reply": "echo-request"}.get(self.kind, self.kind)
        other = "ingress" if self.direction == "egress" else "egress"
        if self.kind == "nd":  # sport holds the ND type: keep it
            return Pkt(other, self.family, self.remote, self.proto, self.sport, self.dport, kind)
        return Pkt(other, self.family, self.remote, self.proto, self.dport, self.sport, kind)

    def frame(self) -> bytes:
        if self.proto == -1:
            return tr.arp()
        v6 = self.family == 6
        if self.kind in ("echo-request", "echo-reply"):
            types = (128, 129) if v6 else (8, 0)
            l4 = tr.icmp(types[self.kind == "echo-reply"], self.dport)
        elif self.kind == "icmp-other":
            l4 = tr.icmp(1 if v6 else 3, 0, code=1)
        elif self.kind == "nd":
            l4 = tr.icmp(self.sport, 0)  # sport holds the ND type here
        elif self.proto == 6:
            l4 = tr.tcp(self.sport, self.dport)
        elif self.proto == 17:
            l4 = tr.udp(self.sport, self.dport)
        elif self.proto == 132:
            l4 = tr.sctp(self.sport, self.dport)
        else:
            l4 = b"\0" * 8
        if self.kind == "truncated":
            l4 = l4[:2]
        if v6:
            return tr.ipv6(self.src, self.dst, self.proto, l4)
        return tr.ipv4(self.src, self.dst, self.proto, l4, frag_offset=100 if self.kind == "fragment" else 0)


class Reference:
    def __init__(self, identity, flags, entries):
        self.identity, self.flags, self.entries = identity, flags, entries
        self.ct = set()

    def run(self, p: Pkt):
        """(passes, drop event or None), updating the modelled ct."""
        if p.proto == -1 or p.kind == "nd":
            return True, None
        sport, dport = p.ports()
        remote = identity_of(p.remote)
        if p.kind == "truncated" and p.proto in (1, 6, 17, 58, 132):
            enforced = self.flags & (1 if p.direction == "ingress" else 2)
            return (False, self.event(p, remote, 0, 0, "invalid-packet")) if enforced else (True, None)
        key = (p.family, p.proto, p.src, p.dst, sport, dport, p.direction)
        other = "ingress" if p.direction == "egress" else "egress"
        if key in self.ct or (p.family, p.proto, p.dst, p.src, dport, sport, other) in self.ct:
            return True, None
        reason = reference_verdict(self.entries, self.flags, p.direction, remote, p.proto, dport)
        if reason is None:
            self.ct.add(key)
            return True, None
        return False, self.event(p, remote, sport, dport, reason)

    def event(self, p, remote, sport, dport, reason):
        ids = (self.identity, remote) if p.direction == "egress" else (remote, self.identity)
        proto = {1: "ICMP", 6: "TCP", 17: "UDP", 58: "ICMPv6", 132: "SCTP"}.get(p.proto, str(p.proto))
        return (EP, ids[0], ids[1], p.src, p.dst, sport, dport, proto, p.direction, reason)


# -- strategies -----------------------------------------------------------------


@st.composite
def entries(draw):
    proto = draw(st.sampled_from(ENTRY_PROTOS))
    if proto == 0:
        port, plen = 0, 0
    else:
        plen = draw(st.integers(0, 16))
        port = draw(st.one_of(st.sampled_from(PORTS), st.integers(0, 65535)))
        port &= (0xFFFF << (16 - plen)) & 0xFFFF
    return (draw(st.sampled_from(["ingress", "egress"])), draw(st.sampled_from(IDENTITIES)), proto, port, plen,
            draw(st.booleans()))


BY_IDENTITY = {}
for _addr in REMOTES_V4 + REMOTES_V6:
    BY_IDENTITY.setdefault(identity_of(_addr), []).append(_addr)


@st.composite
def packets(draw, policy):
    """A packet; 3 in 4 of them aimed at one of the entries (its direction,
    protocol, a remote with its identity, a port in its block), so that
    entries overlap and decide often."""
    direction = draw(st.sampled_from(["ingress", "egress"]))
    if draw(st.integers(0, 30)) == 0:
        return Pkt(direction, 4, "0.0.0.0", -1, 0, 0)  # ARP
    target = draw(st.sampled_from(policy)) if policy and draw(st.integers(0, 3)) else None
    remotes = REMOTES_V4 + REMOTES_V6
    if target:
        direction = target[0]
        family_only = {1: 4, 58: 6}.get(target[2])
        if family_only:
            remotes = [a for a in remotes if ipaddress.ip_address(a).version == family_only]
        remotes = [a for a in BY_IDENTITY.get(target[1], []) if a in remotes] or remotes
    remote = draw(st.sampled_from(remotes))
    family = ipaddress.ip_address(remote).version
    icmp = 1 if family == 4 else 58
    protos = [6, 6, 17, 17, 132, icmp, icmp, 47] + ([0] if family == 6 else [])
    proto = target[2] if target and target[2] else draw(st.sampled_from(protos))
    sport = draw(st.one_of(st.sampled_from(PORTS), st.integers(0, 65535)))
    dport = draw(st.one_of(st.sampled_from(PORTS), st.integers(0, 65535)))
    if target and target[4]:
        dport = target[3] | (dport & (0xFFFF >> target[4]))
    kind = "plain"
    if proto == icmp:
        kind = draw(st.sampled_from(["echo-request", "echo-reply", "icmp-other"] + (["nd"] if family == 6 else [])))
        if kind == "nd":
            sport = draw(st.integers(133, 137))
    elif draw(st.integers(0, 15)) == 0:
        kind = "truncated"
    elif family == 4 and draw(st.integers(0, 15)) == 0:
        kind = "fragment"
    return Pkt(direction, family, remote, proto, sport, dport, kind)


@st.composite
def scenarios(draw):
    """(policy, packets): about a third of the packets are replies of
    earlier ones."""
    policy = draw(st.one_of(st.just([]), st.lists(entries(), min_size=1, max_size=12)))
    # Overlaps: entries derived from others (any identity, a wider port
    # block, the opposite kind), so that deny and allow meet.
    for _ in range(draw(st.integers(0, len(policy)))):
        direction, identity, proto, port, plen, deny = draw(st.sampled_from(policy))
        identity = draw(st.sampled_from([identity, 0]))
        plen = draw(st.integers(0, plen)) if proto else 0
        port &= (0xFFFF << (16 - plen)) & 0xFFFF
        policy.append((direction, identity, proto, port, plen, draw(st.booleans()) or not deny))
    out = []
    for _ in range(draw(st.integers(1, 25))):
        if out and draw(st.integers(0, 2)) == 0:
            out.append(draw(st.sampled_from(out)).reply())
        else:
            out.append(draw(packets(policy)))
    return policy, out


# -- the test -------------------------------------------------------------------

CASES = Counter()


@pytest.fixture(scope="module")
def datapath(require_root):
    root = "/sys/fs/bpf/cilium-cni-test-%08x" % random.getrandbits(32)
    dp = Datapath(root)
    try:
        dp.load()
        for cidr, identity in IPCACHE.items():
            dp.ipcache.set(cidr, identity)
        yield dp
    finally:
        dp.close()
        bpffs.remove_tree(root)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    identity=st.sampled_from([256, 4000, 65535]),
    flags=st.integers(0, 3),
    scenario=scenarios(),
)
def test_datapath_verdict_equals_reference(datapath, identity, flags, scenario):
    policy, pkts = scenario
    datapath.endpoints.set(IFINDEX, EP, identity=identity, flags=flags)
    datapath.policy.clear(EP)
    datapath.ct.flush()
    datapath.policy.update(EP, policy)
    events = []
    datapath.open_events(events.append)
    ref = Reference(identity, flags, policy)
    want_events = []
    for p in pkts:
        passes, event = ref.run(p)
        verdict = tr.run(datapath, p.direction, p.frame(), ifindex=IFINDEX)
        assert verdict == (tr.TC_ACT_UNSPEC if passes else tr.TC_ACT_SHOT), (p, ref.entries, flags)
        if event:
            want_events.append(event)
        CASES["packets"] += 1
    while datapath.poll_events(0):
        pass
    got = [(e["epID"], e["srcIdentity"], e["dstIdentity"], e["src"], e["dst"], e["sport"], e["dport"], e["proto"],
            e["direction"], e["reason"]) for e in events]
    assert Counter(got) == Counter(want_events)
    CASES["examples"] += 1
    CASES["drops"] += len(want_events)
    for p in pkts:
        if p.proto != -1:
            matched = {e[5] for e in policy if entry_matches(e, p.direction, identity_of(p.remote), p.proto,
                                                             p.ports()[1], e[5])}
            CASES["matching an entry"] += bool(matched)
            CASES["matching deny and allow"] += len(matched) == 2


def test_enough_cases_ran():
    # Runs after the property (file order): thousands of packets per run.
    print(dict(CASES))
    assert CASES["examples"] >= 600 and CASES["packets"] >= 5000, CASES
