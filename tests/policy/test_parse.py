import json
import os
import textwrap

import pytest

from agent.policy import parse as P
from agent.policy.ports import PortSpec
from agent.policy.repository import Repository

pytestmark = pytest.mark.unit

GOOD = textwrap.dedent("""\
    apiVersion: cilium.io/v2
    kind: CiliumNetworkPolicy
    metadata:
      name: web
      namespace: prod
    spec:
      description: web policy
      endpointSelector:
        matchLabels:
          app: web
      ingress:
      - fromEndpoints:
        - matchLabels:
            app: client
        toPorts:
        - ports:
          - port: "80"
            protocol: TCP
          - port: 1000
            endPort: 1010
      egress:
      - toCIDRSet:
        - cidr: 10.0.0.0/8
          except: [10.1.0.0/16]
        toEntities: [world]
      - toCIDR: [192.168.0.0/16]
      egressDeny:
      - toEndpoints: [{}]
        toPorts: [{ports: [{port: 22}]}]
    """)


def err(text, name="p.yaml"):
    with pytest.raises(P.PolicyError) as info:
        P.parse_text(text, name)
    return str(info.value)


def test_good_policy():
    [rule] = P.parse_text(GOOD, "p.yaml")
    assert (rule.name, rule.namespace, rule.source, rule.description) == ("web", "prod", "p.yaml", "web policy")
    assert rule.has_ingress and rule.has_egress
    assert rule.endpoint_selector.key == "{any:app=web,k8s:io.kubernetes.pod.namespace=prod}"
    ing, eg1, eg2, deny = rule.items
    assert (ing.direction, ing.deny) == ("ingress", False)
    assert [p.key for p in ing.peers] == ["{any:app=client,k8s:io.kubernetes.pod.namespace=prod}"]
    assert ing.ports == (PortSpec("TCP", 80), PortSpec("ANY", 1000, 1010))
    assert (6, 80, 16) in ing.l4 and (17, 1000, 13) in ing.l4 and (132, 1010, 16) in ing.l4
    assert [p.key for p in eg1.peers] == ["cidr:10.0.0.0/8 except 10.1.0.0/16", "entity:world"]
    assert eg1.ports is None and eg1.l4 == ((0, 0, 0),)
    assert [p.key for p in eg2.peers] == ["cidr:192.168.0.0/16"]
    assert deny.deny and deny.direction == "egress"
    assert [p.key for p in deny.peers] == ["{k8s:io.kubernetes.pod.namespace=prod}"]
    assert {str(p) for p in rule.cidr_prefixes()} == {"10.0.0.0/8", "10.1.0.0/16", "192.168.0.0/16"}


def test_forms_stream_specs_list_json():
    doc = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "a"},
           "specs": [{"endpointSelector": {}, "ingress": []}, {"endpointSelector": {}, "egress": [{}]}],
           "spec": {"endpointSelector": {"matchLabels": {"x": "y"}}}}
    rules = P.parse_text(json.dumps(doc, indent="\t"), "a.json")
    assert [(r.index, r.has_ingress, r.has_egress) for r in rules] == [(0, False, False), (1, True, False),
                                                                          (2, False, True)]
    other = dict(doc, metadata={"name": "b"})
    stream = "---\n" + json.dumps(doc) + "\n---\n" + json.dumps(other) + "\n---\n"
    assert [r.name for r in P.parse_text(stream)] == ["a"] * 3 + ["b"] * 3
    lst = {"apiVersion": "v1", "kind": "List", "items": [doc, other]}
    assert len(P.parse_text(json.dumps(lst))) == 6
    assert P.parse_text("") == [] and P.parse_text("---\n") == []


def test_to_ports_alone_is_everyone_and_empty_item_is_nothing():
    text = textwrap.dedent("""\
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: x}
        spec:
          endpointSelector: {}
          ingress:
          - toPorts: [{ports: [{port: 53, protocol: UDP}]}]
          - {}
          - fromEntities: [all, host]
        """)
    a, b, c = P.parse_text(text)[0].items
    assert [p.key for p in a.peers] == ["{}"] and a.l4 == ((17, 53, 16),)
    assert b.peers == ()
    assert [p.key for p in c.peers] == ["{}", "entity:host"]


def replace(old, new, text=GOOD):
    assert old in text
    return text.replace(old, new, 1)


@pytest.mark.parametrize("text,want", [
    (replace('port: "80"', 'port: "80"\n        foo: 1'),
     "p.yaml:18: policy 'web': spec.ingress[0].toPorts[0].ports[0].foo: unknown field 'foo'"),
    (replace("toCIDRSet", "toFQDNs"),
     "p.yaml:22: policy 'web': spec.egress[0].toFQDNs: field 'toFQDNs' (DNS-based policy) is not supported"),
    (replace("- ports:", "- rules: {http: [{}]}\n      ports:"),
     "p.yaml:16: policy 'web': spec.ingress[0].toPorts[0].rules: field 'rules' (L7 policy) is not supported"),
    (replace("10.1.0.0/16", "10.1.0.0/33"),
     "p.yaml:24: policy 'web': spec.egress[0].toCIDRSet[0].except[0]: bad CIDR '10.1.0.0/33'"),
    (replace("192.168.0.0/16", "192.168.0.300"),
     "p.yaml:26: policy 'web': spec.egress[1].toCIDR[0]: bad CIDR '192.168.0.300'"),
    (replace("10.1.0.0/16", "11.0.0.0/16"),
     "p.yaml:24: policy 'web': spec.egress[0].toCIDRSet[0].except: except prefix 11.0.0.0/16 is not inside"),
    (replace("endPort: 1010", "endPort: 10"),
     "p.yaml:20: policy 'web': spec.ingress[0].toPorts[0].ports[1].endPort: endPort 10 is below port 1000"),
    (replace("endPort: 1010", "endPort: 65536"), "p.yaml:20: policy 'web': spec.ingress[0].toPorts[0].ports[1]."
                                                 "endPort: endPort 65536 out of range 0..65535"),
    (replace('"80"', "70000"), "p.yaml:17: policy 'web': spec.ingress[0].toPorts[0].ports[0].port: "
                               "port 70000 out of range"),
    (replace('"80"', '"http"'), "p.yaml:17: policy 'web': spec.ingress[0].toPorts[0].ports[0].port: "
                                "named port 'http' is not supported"),
    (replace("protocol: TCP", "protocol: ICMP"),
     "p.yaml:18: policy 'web': spec.ingress[0].toPorts[0].ports[0].protocol: \"ICMP\" is not one of TCP, UDP, "
     "SCTP, ANY"),
    (replace("  name: web", "  name: web\n  name: x"), "p.yaml:5: metadata: duplicate key 'name'"),
    (GOOD + "---\n" + GOOD, "p.yaml:34: policy 'web': duplicate policy name (first at line 4)"),
    (replace("kind: CiliumNetworkPolicy", "kind: CiliumClusterwideNetworkPolicy"),
     "p.yaml:2: kind \"CiliumClusterwideNetworkPolicy\" is not supported"),
    (replace("apiVersion: cilium.io/v2", "apiVersion: cilium.io/v1"),
     "p.yaml:1: policy 'web': apiVersion: must be \"cilium.io/v2\", not \"cilium.io/v1\""),
    (replace("  endpointSelector:", "  nodeSelector: {}\n  endpointSelector:"),
     "p.yaml:8: policy 'web': spec.nodeSelector: field 'nodeSelector' (host policy) is not supported"),
    (replace("  endpointSelector:\n    matchLabels:\n      app: web\n", ""),
     "p.yaml:6: policy 'web': spec: missing required field 'endpointSelector'"),
    (replace("app: client", "bad key: x"),
     "p.yaml:14: policy 'web': spec.ingress[0].fromEndpoints[0].matchLabels.bad key: bad selector key 'bad key'"),
    (replace("toEntities: [world]", "toEntities: [world, health]"),
     "p.yaml:25: policy 'web': spec.egress[0].toEntities[1]: \"health\" is not one of world, host, cluster, all"),
    (replace("  ingress:\n", "  ingress:\n  - fromEndpoints: {}\n"),
     "p.yaml:12: policy 'web': spec.ingress[0].fromEndpoints: must be a list, not an object"),
    (replace("  name: web", "  name: Web"), "p.yaml:4: policy 'Web': metadata.name: \"Web\" is not a valid name"),
    (replace("spec:", "specx:"), "p.yaml:6: policy 'web': specx: unknown field 'specx'"),
    ("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: a}\n",
     "p.yaml:1: policy 'a': policy has neither spec nor specs"),
    ("- a\n- b\n", "p.yaml:1: a policy document must be an object, not a list"),
    ("apiVersion: v1\nkind: List\nitems:\n- kind: CiliumNetworkPolicy\n  metadata: {name: a}\n",
     "p.yaml:4: policy 'a': items[0]: missing required field 'apiVersion'"),
    ("metadata: {name: a\n", "p.yaml:2: invalid YAML: "),
    ("a: b\n  c: d\n", "p.yaml:2: invalid YAML: mapping values are not allowed"),
    ("key: 'unterminated\n", "p.yaml:2: invalid YAML: "),
    ("a: 1\nb: \x00", "p.yaml:2: invalid YAML: unacceptable character #x0000"),
    ("a: &x {b: *x}\n", "p.yaml:1: recursive YAML alias"),
    ("!!python/object:os.system x\n", "p.yaml:1: invalid YAML: could not determine a constructor"),
])
def test_errors_name_file_line_and_reason(text, want):
    assert err(text).startswith(want), err(text)


def test_rejected_file_applies_nothing(tmp_path):
    repo = Repository()
    f = tmp_path / "p.yaml"
    f.write_text(GOOD)
    repo.replace_source(str(f), P.parse_text(f.read_text(), str(f)))
    before = (repo.revision, repo.rules())
    # the second document is bad: the first (valid) one must not be applied either
    other = replace("  name: web", "  name: other")
    f.write_text(other + "---\n" + replace("protocol: TCP", "protocol: XYZ"))
    with pytest.raises(P.PolicyError, match=r"p\.yaml:\d+: .*protocol"):
        repo.replace_source(str(f), P.parse_text(f.read_text(), str(f)))
    assert (repo.revision, repo.rules()) == before


def test_policy_files(tmp_path):
    (tmp_path / "b.yml").write_text("x")
    (tmp_path / "a.yaml").write_text("x")
    (tmp_path / "c.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / ".hidden.yaml").write_text("ignored: [")
    (tmp_path / "dir.yaml").mkdir()
    assert [os.path.basename(f) for f in P.policy_files(str(tmp_path))] == [
        "a.yaml", "b.yml", "c.json"]
    with pytest.raises(P.PolicyError, match="cannot list policy directory"):
        P.policy_files(str(tmp_path / "missing"))
