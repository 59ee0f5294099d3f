import textwrap

import pytest

from agent import labels as L
from agent.policy.endpoint import EndpointPolicy
from agent.policy.parse import parse_text
from agent.policy.ports import PortSpec, block_matches, port_range_blocks
from agent.policy.repository import Repository
from agent.policy.selectorcache import SelectorCache
from agent.policy.verdict import ALLOW, POLICY_DENIED, POLICY_DENY, verdict

pytestmark = pytest.mark.unit

# -- port range blocks -------------------------------------------------------


@pytest.mark.parametrize("lo,hi,want", [
    (80, 80, [(80, 16)]),
    (0, 65535, [(0, 0)]),
    (1024, 2047, [(1024, 6)]),
    (1000, 1010, [(1000, 13), (1008, 15), (1010, 16)]),
    (1, 65535, [(1, 16), (2, 15), (4, 14), (8, 13), (16, 12), (32, 11), (64, 10), (128, 9), (256, 8),
                (512, 7), (1024, 6), (2048, 5), (4096, 4), (8192, 3), (16384, 2), (32768, 1)]),
    (65535, 65535, [(65535, 16)]),
])
def test_port_range_blocks(lo, hi, want):
    assert port_range_blocks(lo, hi) == want


def test_port_range_blocks_exact_and_minimal():
    import random
    rnd = random.Random(7)
    for _ in range(300):
        lo = rnd.randrange(0, 65536)
        hi = min(65535, lo + rnd.choice([0, 1, 2, 7, 100, 5000, 70000]))
        blocks = port_range_blocks(lo, hi)
        covered = set()
        for port, plen in blocks:
            size = 1 << (16 - plen)
            assert port % size == 0  # aligned
            span = set(range(port, port + size))
            assert not (covered & span)
            covered |= span
        assert covered == set(range(lo, hi + 1))
        # minimal: no two neighbouring blocks could merge into one aligned block
        for (p1, l1), (_, l2) in zip(blocks, blocks[1:], strict=False):
            assert not (l1 == l2 and l1 > 0 and p1 % (1 << (17 - l1)) == 0)
    with pytest.raises(ValueError):
        port_range_blocks(10, 9)


def test_block_matches_and_port_spec():
    assert block_matches(1024, 6, 2047) and not block_matches(1024, 6, 2048)
    assert block_matches(0, 0, 12345)
    assert PortSpec("ANY", 53).blocks() == [(6, 53, 16), (17, 53, 16), (132, 53, 16)]
    assert PortSpec("TCP", 0).blocks() == [(6, 0, 0)]
    assert PortSpec("UDP", 10, 11).blocks() == [(17, 10, 15)]
    assert PortSpec("TCP", 10, 12).matches(6, 12) and not PortSpec("TCP", 10, 12).matches(17, 11)


# -- the verdict over entries --------------------------------------------------


def test_verdict_three_steps():
    entries = [("ingress", 300, 6, 80, 16, False), ("ingress", 0, 17, 1024, 6, False),
               ("ingress", 301, 0, 0, 0, True), ("egress", 0, 0, 0, 0, False)]
    enf = {"ingress": True, "egress": False}
    assert verdict(entries, enf, "ingress", 300, 6, 80) == ALLOW
    assert verdict(entries, enf, "ingress", 300, 6, 81) == POLICY_DENIED
    assert verdict(entries, enf, "ingress", 999, 17, 2000) == ALLOW
    assert verdict(entries, enf, "ingress", 999, 17, 2048) == POLICY_DENIED
    assert verdict(entries, enf, "ingress", 301, 17, 1500) == POLICY_DENY  # deny wins over allow
    assert verdict(entries, enf, "egress", 5, 1, 0) == ALLOW
    assert verdict([], {"ingress": False, "egress": False}, "ingress", 5, 6, 1) == ALLOW


# -- EndpointPolicy ------------------------------------------------------------


def policy(body):
    head = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: %s}\nspec:\n"
    return "---\n".join(head % name + textwrap.indent(textwrap.dedent(spec), "  ") for name, spec in body)


RULES = policy([("a", """\
    endpointSelector: {matchLabels: {app: web}}
    ingress:
    - fromEndpoints: [{matchLabels: {role: client}}]
      toPorts: [{ports: [{port: 80, protocol: TCP}]}]
    - fromEndpoints: [{matchLabels: {role: admin}}]
    """), ("b", """\
    endpointSelector: {matchLabels: {app: web}}
    ingress:
    - fromEndpoints: [{matchLabels: {role: client}}]
      toPorts: [{ports: [{port: 80, protocol: TCP}, {port: 8000, endPort: 8001, protocol: UDP}]}]
    egressDeny:
    - toEntities: [world]
    """)])

WEB = frozenset({("k8s", "app", "web")})


class Writes:
    def __init__(self):
        self.calls = []

    def __call__(self, adds, deletes, enforced):
        self.calls.append((list(adds), list(deletes), dict(enforced)))


@pytest.fixture
def setup():
    ids = dict(L.RESERVED_IDENTITIES)
    ids[300] = frozenset({("k8s", "role", "client")})
    cache, repo = SelectorCache(ids), Repository()
    repo.replace_source("p.yaml", parse_text(RULES, "p.yaml"))
    return cache, repo


def test_initial_entries_and_refcounts(setup):
    cache, repo = setup
    w = Writes()
    ep = EndpointPolicy(7, WEB, repo, cache, w)
    want = {("ingress", 300, 6, 80, 16, False), ("ingress", 300, 17, 8000, 15, False),
            ("egress", 2, 0, 0, 0, True)}
    assert ep.entries == want and ep.realized == want
    assert ep.refcount(("ingress", 300, 6, 80, 16, False)) == 2  # two rules give it
    assert w.calls == [(sorted(want), [], {"ingress": True, "egress": True})]
    assert str(ep) == "endpoint 7"
    users = {s["selector"]: s["users"] for s in cache.selectors()}
    assert users == {"{any:role=client}": ["endpoint 7"], "{any:role=admin}": ["endpoint 7"],
                     "entity:world": ["endpoint 7"]}


def test_identity_change_writes_only_the_delta(setup):
    cache, repo = setup
    w = Writes()
    ep = EndpointPolicy(7, WEB, repo, cache, w)
    w.calls.clear()
    cache.update_identities({400: frozenset({("k8s", "role", "admin")}), 401: frozenset({("k8s", "x", "y")})}, ())
    assert w.calls == [([("ingress", 400, 0, 0, 0, False)], [], {"ingress": True, "egress": True})]
    cache.update_identities({500: frozenset({("k8s", "role", "client"), ("k8s", "role2", "admin")})}, ())
    assert w.calls[-1][0] == [("ingress", 500, 6, 80, 16, False), ("ingress", 500, 17, 8000, 15, False)]
    cache.update_identities({L.MIN_CIDR_IDENTITY: L.cidr_labels("1.2.3.0/24")}, [300])
    assert w.calls[-1][:2] == ([("egress", L.MIN_CIDR_IDENTITY, 0, 0, 0, True)],
                               [("ingress", 300, 6, 80, 16, False), ("ingress", 300, 17, 8000, 15, False)])
    n = len(w.calls)
    cache.update_identities({401: frozenset({("k8s", "x", "z")})}, ())  # relevant to no selector
    assert len(w.calls) == n
    # what the deltas built equals a fresh computation
    fresh = EndpointPolicy(8, WEB, repo, cache, Writes())
    assert fresh.entries == ep.entries == ep.realized


def test_rule_change_and_label_change_apply_differences(setup):
    cache, repo = setup
    w = Writes()
    ep = EndpointPolicy(7, WEB, repo, cache, w)
    repo.delete("b")
    ep.regenerate()
    assert w.calls[-1] == ([], [("egress", 2, 0, 0, 0, True), ("ingress", 300, 17, 8000, 15, False)],
                           {"ingress": True, "egress": False})
    assert ep.refcount(("ingress", 300, 6, 80, 16, False)) == 1
    assert {s["selector"] for s in cache.selectors()} == {"{any:role=client}", "{any:role=admin}"}
    ep.set_labels({("k8s", "app", "db")})
    assert w.calls[-1] == ([], [("ingress", 300, 6, 80, 16, False)], {"ingress": False, "egress": False})
    assert ep.entries == frozenset() and cache.selectors() == []
    n = len(w.calls)
    ep.regenerate()  # nothing changed: nothing written
    assert len(w.calls) == n
    ep.close()


def test_failed_apply_is_retried(setup):
    cache, repo = setup
    w, fail = Writes(), [True]

    def flaky(adds, deletes, enforced):
        if fail[0]:
            raise OSError("map full")
        w(adds, deletes, enforced)

    fail[0] = False
    ep = EndpointPolicy(7, WEB, repo, cache, flaky)
    fail[0] = True
    with pytest.raises(OSError):
        cache.update_identities({400: frozenset({("k8s", "role", "admin")})}, ())
    assert ("ingress", 400, 0, 0, 0, False) in ep.entries and ("ingress", 400, 0, 0, 0, False) not in ep.realized
    fail[0] = False
    cache.update_identities({401: frozenset({("k8s", "role", "admin")})}, ())
    assert w.calls[-1][0] == [("ingress", 400, 0, 0, 0, False), ("ingress", 401, 0, 0, 0, False)]
    assert ep.realized == ep.entries


def test_failed_initial_apply_leaves_no_selector_users(setup):
    cache, repo = setup

    def broken(adds, deletes, enforced):
        raise OSError("no map")

    with pytest.raises(OSError):
        EndpointPolicy(7, WEB, repo, cache, broken)
    assert cache.selectors() == []


def test_wildcard_is_identity_zero_and_ignores_identity_churn():
    cache, repo = SelectorCache(dict(L.RESERVED_IDENTITIES)), Repository()
    repo.replace_source("p", parse_text(policy([("w", """\
        endpointSelector: {}
        ingress: [{fromEntities: [all], toPorts: [{ports: [{port: 53}]}]}]
        egress: []
        """)])))
    w = Writes()
    ep = EndpointPolicy(1, WEB, repo, cache, w)
    assert ep.entries == {("ingress", 0, p, 53, 16, False) for p in (6, 17, 132)}
    assert w.calls[-1][2] == {"ingress": True, "egress": True}
    cache.update_identities({900: WEB}, ())
    assert len(w.calls) == 1


def test_allow_host_adds_one_host_entry_only_where_ingress_is_enforced(setup):
    cache, repo = setup
    ep = EndpointPolicy(7, WEB, repo, cache, Writes(), allow_host=True)
    host = ("ingress", L.ID_HOST, 0, 0, 0, False)
    assert host in ep.realized and ep.refcount(host) == 1
    other = EndpointPolicy(8, frozenset({("k8s", "app", "db")}), repo, cache, Writes(),
                           allow_host=True)
    assert host not in other.entries  # nothing enforces its ingress: no entry needed
    # A rule selecting the host too adds a reference; taking it away keeps ours.
    with_host = RULES + "---\n" + policy([("h", """\
        endpointSelector: {matchLabels: {app: web}}
        ingress: [{fromEntities: [host]}]
        """)])
    repo.replace_source("p.yaml", parse_text(with_host, "p.yaml"))
    ep.regenerate()
    assert ep.refcount(host) == 2
    repo.replace_source("p.yaml", parse_text(RULES, "p.yaml"))
    ep.regenerate()
    assert ep.refcount(host) == 1 and host in ep.realized
    # A deny for the host still wins over the implicit allow (verdict order).
    assert verdict(ep.entries | {("ingress", L.ID_HOST, 0, 0, 0, True)}, ep.enforced,
                   "ingress", L.ID_HOST, 6, 80) == POLICY_DENY
    assert verdict(ep.entries, ep.enforced, "ingress", L.ID_HOST, 6, 9999) == ALLOW
    without = EndpointPolicy(9, WEB, repo, cache, Writes())
    assert verdict(without.entries, without.enforced, "ingress", L.ID_HOST, 6, 9999) == POLICY_DENIED
