import ipaddress

import pytest

from agent import labels as L
from agent.policy import selector as S

pytestmark = pytest.mark.unit


def sel(match_labels=None, exprs=None):
    return S.LabelSelector.from_k8s(match_labels, exprs)


WEB = frozenset({("k8s", "app", "web"), ("k8s", "io.kubernetes.pod.namespace", "prod")})
MIXED = frozenset({("cni", "app", "a"), ("k8s", "app", "b")})


@pytest.mark.parametrize("selector,labels,want", [
    (sel({"app": "web"}), WEB, True),
    (sel({"k8s:app": "web"}), WEB, True),
    (sel({"cni:app": "web"}), WEB, False),
    (sel({"any:app": "web"}), WEB, True),
    (sel({"app": "db"}), WEB, False),
    (sel({"app": "web", "k8s:io.kubernetes.pod.namespace": "prod"}), WEB, True),
    (sel(None, [{"key": "app", "operator": "In", "values": ["db", "web"]}]), WEB, True),
    (sel(None, [{"key": "app", "operator": "In", "values": ["db"]}]), WEB, False),
    (sel(None, [{"key": "app", "operator": "NotIn", "values": ["db"]}]), WEB, True),
    (sel(None, [{"key": "app", "operator": "NotIn", "values": ["web"]}]), WEB, False),
    (sel(None, [{"key": "tier", "operator": "NotIn", "values": ["x"]}]), WEB, True),  # absent key
    (sel(None, [{"key": "app", "operator": "Exists"}]), WEB, True),
    (sel(None, [{"key": "cni:app", "operator": "Exists"}]), WEB, False),
    (sel(None, [{"key": "tier", "operator": "Exists"}]), WEB, False),
    (sel(None, [{"key": "tier", "operator": "DoesNotExist"}]), WEB, True),
    (sel(None, [{"key": "k8s:app", "operator": "DoesNotExist"}]), WEB, False),
    (sel(), WEB, True),
    (sel(), frozenset(), True),
    # a key under two sources: any-source In sees both values; NotIn is its negation
    (sel({"app": "a"}), MIXED, True),
    (sel({"app": "b"}), MIXED, True),
    (sel({"k8s:app": "a"}), MIXED, False),
    (sel(None, [{"key": "app", "operator": "NotIn", "values": ["a"]}]), MIXED, False),
    (sel(None, [{"key": "k8s:app", "operator": "NotIn", "values": ["a"]}]), MIXED, True),
])
def test_label_selector_matches(selector, labels, want):
    assert selector.matches(300, labels) is want
    assert selector.matches(300, S.LabelIndex(labels)) is want


def test_canonical_keys_share_slots():
    a = sel({"app": "web", "k8s:tier": "x"})
    b = sel(None, [{"key": "k8s:tier", "operator": "In", "values": ["x"]},
                   {"key": "any:app", "operator": "In", "values": ["web"]}])
    assert a.key == b.key == "{any:app=web,k8s:tier=x}"
    assert a == b and hash(a) == hash(b)
    assert sel(None, [{"key": "a", "operator": "In", "values": ["y", "x"]}]).key == "{any:a in (x,y)}"
    assert sel().key == "{}" and sel().wildcard
    assert S.entity_selector("all") is S.WILDCARD


def test_selector_errors():
    with pytest.raises(ValueError, match="unknown selector operator 'Has'"):
        sel(None, [{"key": "a", "operator": "Has"}])
    with pytest.raises(ValueError, match="needs at least one value"):
        sel(None, [{"key": "a", "operator": "In", "values": []}])
    with pytest.raises(ValueError, match="takes no values"):
        sel(None, [{"key": "a", "operator": "Exists", "values": ["x"]}])
    with pytest.raises(ValueError, match="unknown label source 'src'"):
        sel({"src:a": "x"})


def test_namespace_scoping():
    ns_req = "k8s:io.kubernetes.pod.namespace=prod"
    assert sel({"app": "web"}).scoped("prod").key == "{any:app=web,%s}" % ns_req
    assert sel().scoped("prod").key == "{%s}" % ns_req
    assert not sel().scoped("prod").wildcard
    # a peer selector naming the namespace key (k8s or any source) keeps its own choice
    own = sel({"io.kubernetes.pod.namespace": "dev"})
    assert own.scoped("prod") is own
    own_expr = sel(None, [{"key": "k8s:io.kubernetes.pod.namespace", "operator": "Exists"}])
    assert own_expr.scoped("prod") is own_expr
    # ... but a cni-sourced key of that name does not count
    assert ns_req in sel({"cni:io.kubernetes.pod.namespace": "dev"}).scoped("prod").key
    # the endpoint selector always gets the policy's namespace (as Cilium)
    forced = sel({"k8s:io.kubernetes.pod.namespace": "dev", "app": "x"}).scoped("prod", force=True)
    assert forced.key == "{any:app=x,%s}" % ns_req
    assert sel({"app": "web"}).scoped("") .key == "{any:app=web}"
    other_ns = frozenset({("k8s", "app", "web"), ("k8s", "io.kubernetes.pod.namespace", "dev")})
    assert sel({"app": "web"}).scoped("prod").matches(300, WEB)
    assert not sel({"app": "web"}).scoped("prod").matches(300, other_ns)


CIDR_ID = 1 << 24


@pytest.mark.parametrize("entity,ident,labels,want", [
    ("host", 1, L.RESERVED_IDENTITIES[1], True),
    ("host", 2, L.RESERVED_IDENTITIES[2], False),
    ("world", 2, L.RESERVED_IDENTITIES[2], True),
    ("world", CIDR_ID, L.cidr_labels("10.0.0.0/8"), True),
    ("world", 300, WEB, False),
    ("cluster", 300, WEB, True),
    ("cluster", 1, L.RESERVED_IDENTITIES[1], True),
    ("cluster", 4, L.RESERVED_IDENTITIES[4], True),
    ("cluster", 2, L.RESERVED_IDENTITIES[2], False),
    ("cluster", CIDR_ID, L.cidr_labels("10.0.0.0/8"), False),
    ("all", 2, L.RESERVED_IDENTITIES[2], True),
    ("all", 300, WEB, True),
])
def test_entities(entity, ident, labels, want):
    assert S.entity_selector(entity).matches(ident, labels) is want


def test_unknown_entity():
    with pytest.raises(ValueError, match="entity 'health' is not supported"):
        S.entity_selector("health")


def net(text):
    return ipaddress.ip_network(text)


def test_cidr_selector():
    s = S.CIDRSelector(net("10.0.0.0/8"), [net("10.1.0.0/16")])
    assert s.key == "cidr:10.0.0.0/8 except 10.1.0.0/16"
    assert s.matches(CIDR_ID, L.cidr_labels("10.0.0.0/8"))
    assert s.matches(CIDR_ID, L.cidr_labels("10.2.0.0/16"))
    assert not s.matches(CIDR_ID, L.cidr_labels("10.1.0.0/16"))
    assert not s.matches(CIDR_ID, L.cidr_labels("10.1.2.0/24"))
    assert not s.matches(CIDR_ID, L.cidr_labels("0.0.0.0/0"))
    assert not s.matches(CIDR_ID, L.cidr_labels("11.0.0.0/8"))
    assert not s.matches(CIDR_ID, L.cidr_labels("::/0"))
    assert not s.matches(2, L.RESERVED_IDENTITIES[2])
    assert not s.matches(300, WEB)
    for zero in ("0.0.0.0/0", "::/0"):
        z = S.CIDRSelector(net(zero))
        assert z.matches(2, L.RESERVED_IDENTITIES[2])
    assert S.CIDRSelector(net("::/0")).matches(CIDR_ID, L.cidr_labels("2001:db8::/32"))
    assert not S.CIDRSelector(net("::/0")).matches(CIDR_ID, L.cidr_labels("10.0.0.0/8"))
    with pytest.raises(ValueError, match="except prefix 11.0.0.0/16 is not inside 10.0.0.0/8"):
        S.CIDRSelector(net("10.0.0.0/8"), [net("11.0.0.0/16")])


def test_parse_prefix():
    assert S.parse_prefix("10.1.2.3/8") == net("10.0.0.0/8")  # host bits masked, as Cilium
    assert S.parse_prefix("10.1.2.3") == net("10.1.2.3/32")
    assert S.parse_prefix("2001:db8::1/32") == net("2001:db8::/32")
    for bad in ("10.0.0.0/33", "10.0.0.256/8", "nonsense", ""):
        with pytest.raises(ValueError, match="bad CIDR"):
            S.parse_prefix(bad)
