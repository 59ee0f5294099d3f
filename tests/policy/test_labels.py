import pytest

from agent import labels as L

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("text,want", [
    ("k8s:app=web", ("k8s", "app", "web")),
    ("app=web", ("any", "app", "web")),
    ("k8s:foo", ("k8s", "foo", "")),
    ("app=a:b", ("any", "app", "a:b")),
    ("reserved:world", ("reserved", "world", "")),
    ("cidr:2001:db8::/32", ("cidr", "2001:db8::/32", "")),
    ("k8s:io.kubernetes.pod.namespace=prod", ("k8s", "io.kubernetes.pod.namespace", "prod")),
])
def test_parse_label(text, want):
    assert L.parse_label(text) == want


def test_parse_label_default_source_and_errors():
    assert L.parse_label("app=web", L.SOURCE_CNI) == ("cni", "app", "web")
    with pytest.raises(ValueError, match="unknown label source 'foo'"):
        L.parse_label("foo:bar")
    with pytest.raises(ValueError, match="empty key"):
        L.parse_label("k8s:=x")


def test_format_and_canonical_round_trip():
    labels = frozenset({("k8s", "app", "web"), ("cni", "tier", ""), ("k8s", "io.kubernetes.pod.namespace", "a")})
    text = L.canonical(labels)
    assert text == "cni:tier;k8s:app=web;k8s:io.kubernetes.pod.namespace=a"
    assert L.from_canonical(text) == labels
    assert L.from_canonical("") == frozenset()
    assert L.format_label(("k8s", "foo", "")) == "k8s:foo"


def test_reserved_identities_and_ranges():
    assert L.RESERVED_IDENTITIES[1] == frozenset({("reserved", "host", "")})
    assert L.RESERVED_IDENTITIES[2] == frozenset({("reserved", "world", "")})
    assert [L.RESERVED_NAMES[i] for i in range(1, 6)] == ["host", "world", "unmanaged", "health", "init"]
    assert (L.MIN_ENDPOINT_IDENTITY, L.MAX_ENDPOINT_IDENTITY, L.MIN_CIDR_IDENTITY) == (256, 65535, 2 ** 24)
    assert L.cidr_labels("10.0.0.0/8") == frozenset({("cidr", "10.0.0.0/8", ""), ("reserved", "world", "")})


def test_labels_from_cni_args():
    args = {"cni": {"labels": [{"key": "app", "value": "web"}, {"key": "k8s:tier", "value": "front"},
                               {"key": "canary"}]}, "other": 1}
    assert L.labels_from_cni_args(args, "prod") == frozenset({
        ("cni", "app", "web"), ("k8s", "tier", "front"), ("cni", "canary", ""),
        ("k8s", "io.kubernetes.pod.namespace", "prod")})
    assert L.labels_from_cni_args(None, None) == frozenset()
    assert L.labels_from_cni_args({}, "") == frozenset()
    assert L.labels_from_cni_args({"cni": {}}, "a") == frozenset({("k8s", "io.kubernetes.pod.namespace", "a")})


@pytest.mark.parametrize("args,ns,message", [
    ([], None, "args must be an object"),
    ({"cni": []}, None, "args.cni must be an object"),
    ({"cni": {"labels": {"app": "web"}}}, None, "args.cni.labels must be a list"),
    ({"cni": {"labels": ["app=web"]}}, None, r"labels\[0\] must be an object"),
    ({"cni": {"labels": [{"value": "x"}]}}, None, r"labels\[0\] has no key"),
    ({"cni": {"labels": [{"key": "a", "val": "x"}]}}, None, "unknown field 'val'"),
    ({"cni": {"labels": [{"key": 3}]}}, None, "key must be a string"),
    ({"cni": {"labels": [{"key": "bad key"}]}}, None, "bad label key 'bad key'"),
    ({"cni": {"labels": [{"key": "a", "value": "b c"}]}}, None, "bad value 'b c'"),
    ({"cni": {"labels": [{"key": "reserved:host"}]}}, None, "source 'reserved' cannot be set"),
    ({"cni": {"labels": [{"key": "io.kubernetes.pod.namespace", "value": "x"}]}}, None, "K8S_POD_NAMESPACE"),
    ({"cni": {"labels": [{"key": "a", "value": "1"}, {"key": "a", "value": "2"}]}}, None, "twice"),
    (None, "Bad_NS", "bad pod namespace"),
])
def test_labels_from_cni_args_errors(args, ns, message):
    with pytest.raises(ValueError, match=message):
        L.labels_from_cni_args(args, ns)
