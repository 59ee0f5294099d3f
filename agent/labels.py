"""Labels, label sets and the reserved identities (docs/policy.md).

A label is a `(source, key, value)` tuple written `source:key=value`, or
`source:key` when the value is empty. A label set is a `frozenset` of such
tuples; its canonical text (sorted label strings joined by `;`) is the key
under which an identity is allocated.

This module only parses, formats and validates; it allocates nothing (the
identity allocator in `agent/identity.py` does) and matches nothing (the
selectors in `agent/policy/selector.py` do).
"""

import re

SOURCE_K8S = "k8s"
SOURCE_CNI = "cni"
SOURCE_RESERVED = "reserved"
SOURCE_CIDR = "cidr"
SOURCE_ANY = "any"  # selectors only: matches a key from every source
SOURCES = frozenset({SOURCE_K8S, SOURCE_CNI, SOURCE_RESERVED, SOURCE_CIDR, SOURCE_ANY})

NAMESPACE_KEY = "io.kubernetes.pod.namespace"
# Cilium's convention: a pod carries each label of its namespace as
# `k8s:io.cilium.k8s.namespace.labels.<key>=<value>`, so that selectors can
# match namespaces by their labels (NetworkPolicy's namespaceSelector).
NAMESPACE_LABELS_PREFIX = "io.cilium.k8s.namespace.labels."

ID_HOST = 1
ID_WORLD = 2
ID_UNMANAGED = 3
ID_HEALTH = 4
ID_INIT = 5
RESERVED_NAMES = {ID_HOST: "host", ID_WORLD: "world", ID_UNMANAGED: "unmanaged",
                  ID_HEALTH: "health", ID_INIT: "init"}
RESERVED_IDENTITIES = {num: frozenset({(SOURCE_RESERVED, name, "")})
                       for num, name in RESERVED_NAMES.items()}
WORLD_LABEL = (SOURCE_RESERVED, "world", "")

MIN_ENDPOINT_IDENTITY = 256
MAX_ENDPOINT_IDENTITY = 65535
MIN_CIDR_IDENTITY = 1 << 24

# Kubernetes label syntax: an optional DNS-subdomain prefix and "/", then a
# name of at most 63 characters; values are empty or such a name.
_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_KEY_RE = re.compile(r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?%s$" % _NAME)
_VALUE_RE = re.compile(r"^(%s)?$" % _NAME)
_NAMESPACE_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def split_source(text, default_source):
    """Split `source:rest` into (source, rest); no known source → default.

    Only a `:` before any `=` can end a source, so `app=a:b` is key `app`,
    value `a:b`; an unknown prefix is an error rather than part of a key.
    """
    colon = text.find(":")
    equals = text.find("=")
    if colon < 0 or (0 <= equals < colon):
        return default_source, text
    source = text[:colon]
    if source not in SOURCES:
        raise ValueError("unknown label source '%s' in '%s' (known: %s)"
                         % (source, text, ", ".join(sorted(SOURCES))))
    return source, text[colon + 1:]


def parse_label(text, default_source=SOURCE_ANY):
    """`source:key=value` (source and value optional) → (source, key, value)."""
    if not isinstance(text, str):
        raise ValueError("label %r is not a string" % (text,))
    source, rest = split_source(text, default_source)
    key, _, value = rest.partition("=")
    if not key:
        raise ValueError("label '%s' has an empty key" % text)
    return (source, key, value)


def format_label(label):
    source, key, value = label
    return "%s:%s=%s" % (source, key, value) if value else "%s:%s" % (source, key)


def parse_labels(texts, default_source=SOURCE_ANY):
    """An iterable of label strings → a label set."""
    return frozenset(parse_label(t, default_source) for t in texts)


def canonical(labels):
    """The canonical text of a label set: sorted label strings joined by `;`."""
    return ";".join(sorted(format_label(lbl) for lbl in labels))


def from_canonical(text):
    """Inverse of canonical() (every label there carries its source)."""
    if not text:
        return frozenset()
    return frozenset(parse_label(t, SOURCE_ANY) for t in text.split(";"))


def namespace_label(namespace):
    return (SOURCE_K8S, NAMESPACE_KEY, namespace)


def cidr_labels(prefix):
    """Labels of the CIDR identity for an `ipaddress` network (or its text)."""
    return frozenset({(SOURCE_CIDR, str(prefix), ""), WORLD_LABEL})


def namespace_labels_key(key):
    """The pod label key that carries namespace label `key` (Cilium's convention)."""
    return NAMESPACE_LABELS_PREFIX + key


def check_key(key, what="label key"):
    """A Kubernetes label key, or one carried under NAMESPACE_LABELS_PREFIX
    (which makes a valid key too long for the plain rule: 31 + 63 characters)."""
    if isinstance(key, str) and key.startswith(NAMESPACE_LABELS_PREFIX):
        key = key[len(NAMESPACE_LABELS_PREFIX):]
    if not isinstance(key, str) or not _KEY_RE.match(key):
        raise ValueError("bad %s %r: want [prefix/]name, name at most 63 of [A-Za-z0-9-_.]" % (what, key))


def check_value(value, key):
    if not isinstance(value, str) or not _VALUE_RE.match(value):
        raise ValueError("bad value %r for label '%s': want at most 63 of [A-Za-z0-9-_.], "
                         "starting and ending alphanumeric" % (value, key))


def labels_from_cni_args(args_obj, namespace):
    """The endpoint's labels from the netconf `args` object and K8S_POD_NAMESPACE.

    `args_obj` is the netconf's `args` (or None): `{"cni": {"labels": [{"key":
    "app", "value": "web"}]}}`. A key without a source gets source `cni`; only
    `cni` and `k8s` may be named (a pod must not claim `reserved:`/`cidr:`
    labels), and the namespace label comes only from `namespace`.
    Raises ValueError naming the offending element.
    """
    labels = set()
    if namespace:
        if not isinstance(namespace, str) or not _NAMESPACE_RE.match(namespace):
            raise ValueError("bad pod namespace %r: want a DNS label" % (namespace,))
        labels.add(namespace_label(namespace))
    if args_obj is None:
        return frozenset(labels)
    if not isinstance(args_obj, dict):
        raise ValueError("netconf args must be an object, not %s" % type(args_obj).__name__)
    cni = args_obj.get("cni")
    if cni is None:
        return frozenset(labels)
    if not isinstance(cni, dict):
        raise ValueError("netconf args.cni must be an object, not %s" % type(cni).__name__)
    items = cni.get("labels")
    if items is None:
        return frozenset(labels)
    if not isinstance(items, list):
        raise ValueError("netconf args.cni.labels must be a list, not %s" % type(items).__name__)
    seen = {}
    for i, item in enumerate(items):
        where = "args.cni.labels[%d]" % i
        if not isinstance(item, dict):
            raise ValueError("%s must be an object with key and value" % where)
        extra = sorted(set(item) - {"key", "value"})
        if extra:
            raise ValueError("%s has unknown field '%s' (want key, value)" % (where, extra[0]))
        if "key" not in item:
            raise ValueError("%s has no key" % where)
        raw_key, value = item["key"], item.get("value", "")
        if not isinstance(raw_key, str):
            raise ValueError("%s key must be a string" % where)
        source, key = split_source(raw_key, SOURCE_CNI)
        if source not in (SOURCE_CNI, SOURCE_K8S):
            raise ValueError("%s: label source '%s' cannot be set from args (only cni, k8s)" % (where, source))
        check_key(key)
        if value is None:
            value = ""
        check_value(value, key)
        if key == NAMESPACE_KEY:
            raise ValueError("%s: label '%s' comes from K8S_POD_NAMESPACE, not args" % (where, key))
        if (source, key) in seen and seen[(source, key)] != value:
            raise ValueError("%s: label '%s:%s' given twice with different values" % (where, source, key))
        seen[(source, key)] = value
        labels.add((source, key, value))
    return frozenset(labels)
