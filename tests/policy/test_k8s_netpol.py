"""NetworkPolicy → CiliumNetworkPolicy → rules (agent/k8s/netpol.py).

The documentation's examples (tests/fixtures/k8s/netpol/) pass the
Kubernetes schemas and give the verdicts the page states, judged here by
the reference verdict over the parsed rules (test_k8s_netpol_datapath.py
judges the same cases with the loaded programs). Then the translation's
shape field by field, policyTypes defaults, every selector operator, and
each refusal: the whole policy, with a message naming it and the field.
"""

import copy
import os

import kubernetes_validate
import pytest

from agent import labels as L
from agent.k8s import netpol
from agent.policy.ports import port_range_blocks
from agent.policy.verdict import reference_verdict
from tests.policy import k8s_netpol_cases as C

pytestmark = pytest.mark.unit

SCHEMA_DIR = os.path.join(os.path.dirname(kubernetes_validate.__file__), "kubernetes-json-schema")
VERSIONS = sorted({d.split("-")[0][1:] for d in os.listdir(SCHEMA_DIR)}, key=lambda v: tuple(map(int, v.split("."))))


def np(spec, name="p", namespace="default", **meta):
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": dict(name=name, namespace=namespace, **meta), "spec": spec}


def judge(rules, local, direction, remote_name, proto, port):
    labels, address = C.remote(remote_name)
    if labels is None:
        return reference_verdict(rules, local, L.ID_WORLD, L.RESERVED_IDENTITIES[L.ID_WORLD], direction, proto,
                                 port, cidr_of_remote=address)
    return reference_verdict(rules, local, 300, labels, direction, proto, port)


# -- the documentation's examples ---------------------------------------------


def test_every_example_of_the_page_is_a_fixture_with_cases():
    assert C.fixture_names() == sorted({
        "test-network-policy", "default-deny-ingress", "allow-all-ingress", "default-deny-egress",
        "allow-all-egress", "default-deny-all", "allow-egress-deny-ingress", "multi-port-egress",
        "namespace-and-pod-selector", "namespace-or-pod-selector", "namespace-by-name"})
    assert {case[0] for case in C.CASES} == set(C.fixture_names())


@pytest.mark.parametrize("version", [VERSIONS[0], VERSIONS[-1]])
@pytest.mark.parametrize("name", C.fixture_names())
def test_fixtures_pass_the_kubernetes_schema(name, version):
    kubernetes_validate.validate(C.load(name), version, strict=True)


def test_the_schema_check_catches_a_bad_policy():
    bad = C.load("multi-port-egress")
    bad["spec"]["egress"][0]["ports"][0]["endPort"] = "32768"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, VERSIONS[-1], strict=True)


@pytest.mark.parametrize("case", C.CASES, ids=C.case_id)
def test_documented_verdicts_by_the_rules(case):
    name, local, expected = case
    rules = netpol.rules(C.load(name))
    got = [judge(rules, C.PODS[local][0], d, r, proto, port) for d, r, proto, port, _ in expected]
    assert got == [want for *_, want in expected]


# -- the translation's shape ------------------------------------------------------


def test_test_network_policy_translates_as_cilium_does():
    cnp = netpol.to_cnp(C.load("test-network-policy"))
    assert cnp["metadata"] == {"name": "test-network-policy", "namespace": "default"}
    spec = cnp["spec"]
    assert spec["endpointSelector"] == {"matchLabels": {"k8s:role": "db", "k8s:io.kubernetes.pod.namespace": "default"}}
    ports = [{"ports": [{"port": "6379", "protocol": "TCP"}]}]
    assert spec["ingress"] == [  # one item per peer, each with the rule's ports
        {"fromCIDRSet": [{"cidr": "172.17.0.0/16", "except": ["172.17.1.0/24"]}], "toPorts": ports},
        {"fromEndpoints": [{"matchLabels": {"k8s:io.cilium.k8s.namespace.labels.project": "myproject"},
                            "matchExpressions": [{"key": "k8s:io.kubernetes.pod.namespace", "operator": "Exists"}]}],
         "toPorts": ports},
        {"fromEndpoints": [{"matchLabels": {"k8s:role": "frontend", "k8s:io.kubernetes.pod.namespace": "default"}}],
         "toPorts": ports}]
    assert spec["egress"] == [{"toCIDRSet": [{"cidr": "10.0.0.0/24"}],
                               "toPorts": [{"ports": [{"port": "5978", "protocol": "TCP"}]}]}]
    assert {lbl["key"]: lbl["value"] for lbl in spec["labels"]} == {
        "io.cilium.k8s.policy.derived-from": "NetworkPolicy", "io.cilium.k8s.policy.name": "test-network-policy",
        "io.cilium.k8s.policy.namespace": "default"}
    [rule] = netpol.rules(C.load("test-network-policy"))
    assert (rule.name, rule.namespace, rule.source) == ("test-network-policy", "default",
                                                        "k8s:networkpolicy/default/test-network-policy")
    assert rule.has_ingress and rule.has_egress and rule.spec == spec
    assert {str(p) for p in rule.cidr_prefixes()} == {"172.17.0.0/16", "172.17.1.0/24", "10.0.0.0/24"}


def test_namespace_defaults_to_default_and_uid_becomes_a_label():
    obj = np({"podSelector": {}}, uid="1234-abcd")
    del obj["metadata"]["namespace"]
    cnp = netpol.to_cnp(obj)
    assert cnp["metadata"]["namespace"] == "default"
    assert {"source": "k8s", "key": "io.cilium.k8s.policy.uid", "value": "1234-abcd"} in cnp["spec"]["labels"]
    [rule] = netpol.rules(obj, source="mine")
    assert rule.source == "mine"


def test_empty_pod_selector_selects_every_pod_of_the_namespace_only():
    [rule] = netpol.rules(np({"podSelector": {}}, namespace="n1"))
    assert rule.endpoint_selector.matches(None, {L.namespace_label("n1"), ("k8s", "app", "x")})
    assert not rule.endpoint_selector.matches(None, {L.namespace_label("n2")})
    assert not rule.endpoint_selector.matches(None, {("k8s", "app", "x")})


def test_peer_pod_selector_is_limited_to_the_policy_namespace_even_naming_the_key():
    spec = {"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {
        "io.kubernetes.pod.namespace": "elsewhere", "app": "a"}}}]}]}
    [sel] = netpol.to_cnp(np(spec))["spec"]["ingress"][0]["fromEndpoints"]
    assert sel["matchLabels"] == {"k8s:io.kubernetes.pod.namespace": "default", "k8s:app": "a"}


def test_empty_namespace_selector_is_every_pod_of_every_namespace_but_not_the_world():
    spec = {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}}]}]}
    rules = netpol.rules(np(spec))
    local = C.PODS["web"][0]
    for pod in ("frontend", "client-other", "prometheus"):
        assert judge(rules, local, "ingress", pod, C.TCP, 1) == C.ALLOW
    assert judge(rules, local, "ingress", "8.8.8.8", C.TCP, 1) == C.DENIED
    host = reference_verdict(rules, local, L.ID_HOST, L.RESERVED_IDENTITIES[L.ID_HOST], "ingress", C.TCP, 1)
    assert host == C.DENIED  # (the agent's allow-localhost entry admits the node itself)


def test_namespace_and_pod_selector_keys_that_collide_must_both_hold():
    key = "io.cilium.k8s.namespace.labels.team"
    spec = {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "a"}},
                                                      "podSelector": {"matchLabels": {key: "b"}}}]}]}
    [sel] = netpol.to_cnp(np(spec))["spec"]["ingress"][0]["fromEndpoints"]
    assert sel["matchLabels"] == {"k8s:" + key: "a"}
    assert {"key": "k8s:" + key, "operator": "In", "values": ["b"]} in sel["matchExpressions"]


def test_long_namespace_label_keys_are_accepted():
    long_name = "x" * 63
    spec = {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {
        "matchLabels": {"example.com/" + long_name: "v", long_name: "w"}}}]}]}
    [rule] = netpol.rules(np(spec))
    pod = C.pod_labels("default") | {("k8s", L.namespace_labels_key("example.com/" + long_name), "v"),
                                     ("k8s", L.namespace_labels_key(long_name), "w")}
    assert rule.items[0].peers[0].matches(300, pod)


@pytest.mark.parametrize("where", ["podSelector", "peerPods", "peerNamespaces"])
def test_every_operator_in_every_selector(where):
    exprs = [{"key": "tier", "operator": "In", "values": ["a", "b"]},
             {"key": "env", "operator": "NotIn", "values": ["prod"]},
             {"key": "team", "operator": "Exists"},
             {"key": "legacy", "operator": "DoesNotExist"}]
    sel = {"matchExpressions": exprs}
    spec = {"podSelector": sel if where == "podSelector" else {}, "ingress": [{"from": [
        {"podSelector": sel} if where == "peerPods" else {"namespaceSelector": sel} if where == "peerNamespaces"
        else {"podSelector": {}}]}]}
    [rule] = netpol.rules(np(spec, namespace="n1"))
    matcher = rule.endpoint_selector if where == "podSelector" else rule.items[0].peers[0]

    def labels(**kw):
        if where == "peerNamespaces":  # the namespace's labels, as its pods carry them
            return frozenset({("k8s", L.namespace_labels_key(k), v) for k, v in kw.items()}
                             | {L.namespace_label("n2")})
        return frozenset({("k8s", k, v) for k, v in kw.items()} | {L.namespace_label("n1")})

    assert matcher.matches(300, labels(tier="a", team="x"))
    assert matcher.matches(300, labels(tier="b", env="dev", team=""))
    assert not matcher.matches(300, labels(tier="c", team="x"))  # In
    assert not matcher.matches(300, labels(tier="a", env="prod", team="x"))  # NotIn
    assert not matcher.matches(300, labels(tier="a"))  # Exists
    assert not matcher.matches(300, labels(tier="a", team="x", legacy="1"))  # DoesNotExist
    # NetworkPolicy keys are Kubernetes labels: the same key from netconf args is not
    cni = frozenset({("cni", "tier", "a"), ("cni", "team", "x"), L.namespace_label("n1")})
    assert where == "peerNamespaces" or not matcher.matches(300, cni)


def test_ports_protocols_and_ranges():
    spec = {"podSelector": {}, "ingress": [{"ports": [
        {"port": 80}, {"protocol": "UDP", "port": 53}, {"protocol": "SCTP"},
        {"protocol": "TCP", "port": 8000, "endPort": 8080}, {"port": 9000, "endPort": 9000}]}]}
    cnp = netpol.to_cnp(np(spec))
    [item] = cnp["spec"]["ingress"]
    assert item == {"fromEntities": ["all"], "toPorts": [{"ports": [
        {"port": "80", "protocol": "TCP"}, {"port": "53", "protocol": "UDP"}, {"port": "0", "protocol": "SCTP"},
        {"port": "8000", "protocol": "TCP", "endPort": 8080}, {"port": "9000", "protocol": "TCP", "endPort": 9000}]}]}
    rules = netpol.rules(np(spec))
    local = C.PODS["web"][0]
    for proto, port, want in ((C.TCP, 80, C.ALLOW), (C.UDP, 80, C.DENIED), (C.UDP, 53, C.ALLOW),
                              (132, 1, C.ALLOW), (132, 65535, C.ALLOW), (C.TCP, 7999, C.DENIED),
                              (C.TCP, 8000, C.ALLOW), (C.TCP, 8080, C.ALLOW), (C.TCP, 8081, C.DENIED),
                              (C.TCP, 9000, C.ALLOW), (C.ICMP, 0, C.DENIED)):
        assert judge(rules, local, "ingress", "8.8.8.8", proto, port) == want, (proto, port)
    # 8000-8080 as its prefix blocks
    assert [(6, 8000, 10), (6, 8064, 12), (6, 8080, 16)] == [(6, *b) for b in port_range_blocks(8000, 8080)]
    assert {(6, 8000, 10), (6, 8064, 12), (6, 8080, 16)} <= set(rules[0].items[0].l4)


def test_empty_ports_and_empty_peers_mean_everything():
    for rule in ({}, {"from": [], "ports": []}, {"from": None, "ports": None}):
        cnp = netpol.to_cnp(np({"podSelector": {}, "ingress": [rule]}))
        assert cnp["spec"]["ingress"] == [{"fromEntities": ["all"]}]


@pytest.mark.parametrize("spec, ingress, egress", [
    ({}, True, False),  # no policyTypes: Ingress always...
    ({"egress": [{}]}, True, True),  # ...and Egress when there are egress rules
    ({"egress": []}, True, False),
    ({"policyTypes": []}, True, False),
    ({"policyTypes": ["Egress"]}, False, True),
    ({"policyTypes": ["Egress"], "ingress": [{}]}, False, True),  # rules of an unlisted direction: ignored
    ({"policyTypes": ["Ingress"], "egress": [{}]}, True, False),
    ({"policyTypes": ["Ingress", "Egress"]}, True, True),
])
def test_policy_types(spec, ingress, egress):
    [rule] = netpol.rules(np(dict(spec, podSelector={})))
    assert (rule.has_ingress, rule.has_egress) == (ingress, egress)
    cnp = netpol.to_cnp(np(dict(spec, podSelector={})))["spec"]
    assert ("ingress" in cnp, "egress" in cnp) == (ingress, egress)
    if not ingress:
        assert not [i for i in rule.items if i.direction == "ingress"]


def test_listed_direction_without_rules_denies_everything():
    [rule] = netpol.rules(np({"podSelector": {}, "policyTypes": ["Ingress"], "ingress": []}))
    assert rule.has_ingress and not rule.items
    assert judge([rule], C.PODS["web"][0], "ingress", "frontend", C.TCP, 80) == C.DENIED


def test_ipv6_ip_block():
    spec = {"podSelector": {}, "policyTypes": ["Egress"], "egress": [
        {"to": [{"ipBlock": {"cidr": "2001:db8::/32", "except": ["2001:db8:1::/48"]}}]}]}
    rules = netpol.rules(np(spec))
    local = C.PODS["web"][0]
    assert judge(rules, local, "egress", "2001:db8:2::1", C.TCP, 1) == C.ALLOW
    assert judge(rules, local, "egress", "2001:db8:1::1", C.TCP, 1) == C.DENIED


# -- refusals ----------------------------------------------------------------------

GOOD = {"podSelector": {"matchLabels": {"app": "a"}}, "policyTypes": ["Ingress", "Egress"],
        "ingress": [{"from": [{"podSelector": {}}], "ports": [{"port": 80}]}],
        "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}]}

REFUSED = [
    # (path into spec, new value, field named, words of the reason)
    (("ingress", 0, "ports", 0, "port"), "http", "spec.ingress[0].ports[0].port", "named port 'http' is not supported"),
    (("ingress", 0, "ports", 0, "port"), 0, "spec.ingress[0].ports[0].port", "out of range"),
    (("ingress", 0, "ports", 0, "port"), 65536, "spec.ingress[0].ports[0].port", "out of range"),
    (("ingress", 0, "ports", 0, "port"), True, "spec.ingress[0].ports[0].port", "must be an integer"),
    (("ingress", 0, "ports", 0, "endPort"), 79, "spec.ingress[0].ports[0].endPort", "not in 80..65535"),
    (("ingress", 0, "ports", 0, "endPort"), 70000, "spec.ingress[0].ports[0].endPort", "not in 80..65535"),
    (("ingress", 0, "ports", 0, "protocol"), "ICMP", "spec.ingress[0].ports[0].protocol", "not one of TCP, UDP, SCTP"),
    (("ingress", 0, "ports", 0), {"endPort": 90}, "spec.ingress[0].ports[0].endPort", "endPort needs a port"),
    (("ingress", 0, "ports", 0, "extra"), 1, "spec.ingress[0].ports[0].extra", "unknown field"),
    (("ingress", 0, "from", 0), {}, "spec.ingress[0].from[0]", "needs podSelector, namespaceSelector or ipBlock"),
    (("ingress", 0, "from", 0, "ipBlock"), {"cidr": "10.0.0.0/8"}, "spec.ingress[0].from[0]",
     "ipBlock cannot be combined"),
    (("egress", 0, "to", 0, "ipBlock", "cidr"), "10.0.0.300/8", "spec.egress[0].to[0].ipBlock.cidr", "bad CIDR"),
    (("egress", 0, "to", 0, "ipBlock", "except"), ["11.0.0.0/16"], "spec.egress[0].to[0].ipBlock.except[0]",
     "not inside 10.0.0.0/8"),
    (("egress", 0, "to", 0, "ipBlock", "except"), ["fd00::/64"], "spec.egress[0].to[0].ipBlock.except[0]",
     "not inside"),
    (("egress", 0, "to", 0, "ipBlock"), {"except": []}, "spec.egress[0].to[0].ipBlock.cidr", "missing"),
    (("egress", 0, "to", 0, "serviceSelector"), {}, "spec.egress[0].to[0].serviceSelector", "unknown field"),
    (("egress", 0, "toFQDNs"), [], "spec.egress[0].toFQDNs", "unknown field"),
    (("podSelector", "matchExpressions"), [{"key": "a", "operator": "Gt", "values": ["1"]}],
     "spec.podSelector.matchExpressions[0]", "unknown selector operator 'Gt'"),
    (("podSelector", "matchExpressions"), [{"key": "a", "operator": "In"}],
     "spec.podSelector.matchExpressions[0]", "needs at least one value"),
    (("podSelector", "matchExpressions"), [{"key": "a", "operator": "Exists", "values": ["x"]}],
     "spec.podSelector.matchExpressions[0]", "takes no values"),
    (("podSelector", "matchExpressions"), [{"key": "a", "operator": "In", "values": "x"}],
     "spec.podSelector.matchExpressions[0]", "must be a list of strings"),
    (("podSelector", "matchLabels"), {"reserved:host": ""}, "spec.podSelector.matchLabels.reserved:host",
     "bad selector key"),
    (("podSelector", "matchLabels"), {"app": "no spaces"}, "spec.podSelector.matchLabels.app", "bad value"),
    (("podSelector", "matchLabels"), {"bad key!": "x"}, "spec.podSelector.matchLabels.bad key!", "bad selector key"),
    (("podSelector", "matchLabels"), {"app": 3}, "spec.podSelector.matchLabels.app", "must be a string"),
    (("ingress", 0, "from", 0, "namespaceSelector"), {"matchLabels": {"k": "-x"}},
     "spec.ingress[0].from[0].namespaceSelector.matchLabels.k", "bad value"),
    (("policyTypes",), ["Ingress", "Both"], "spec.policyTypes[1]", '"Both" is not Ingress or Egress'),
    (("policyTypes",), "Ingress", "spec.policyTypes", "must be a list"),
    (("ingress",), {"from": []}, "spec.ingress", "must be a list"),
    (("endPort",), 1, "spec.endPort", "unknown field"),
]


def put(spec, path, value):
    spec = copy.deepcopy(spec)
    target = spec
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return spec


@pytest.mark.parametrize("path, value, field, reason", REFUSED, ids=[r[2] + "=" + repr(r[1]) for r in REFUSED])
def test_refused_whole_naming_the_policy_and_the_field(path, value, field, reason):
    assert netpol.rules(np(GOOD, name="guard", namespace="team"))  # the policy is fine without the change
    with pytest.raises(netpol.NetworkPolicyError) as err:
        netpol.rules(np(put(GOOD, path, value), name="guard", namespace="team"))
    exc = err.value
    assert (exc.namespace, exc.name, exc.field) == ("team", "guard", field)
    assert reason in exc.reason
    assert str(exc).startswith("networkpolicy 'team/guard': %s: " % field)


def test_refused_objects():
    cases = [
        (dict(np(GOOD), apiVersion="networking.k8s.io/v1beta1"), "apiVersion"),
        (dict(np(GOOD), kind="CiliumNetworkPolicy"), "kind"),
        ({"metadata": {"name": "p"}}, "spec"),
        (np({"ingress": []}), "spec.podSelector"),
        ({"spec": {"podSelector": {}}}, "metadata.name"),
        ({"metadata": {"name": ""}, "spec": {"podSelector": {}}}, "metadata.name"),
    ]
    for obj, field in cases:
        with pytest.raises(netpol.NetworkPolicyError) as err:
            netpol.rules(obj)
        assert err.value.field == field, obj
    with pytest.raises(netpol.NetworkPolicyError):
        netpol.rules([])
    # Objects as a list answers them (no kind, no apiVersion) are fine.
    obj = np(GOOD)
    del obj["kind"], obj["apiVersion"]
    assert netpol.rules(obj)
