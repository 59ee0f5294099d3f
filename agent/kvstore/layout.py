"""Where each thing lives in etcd, and what its value may be.

Every key is under one prefix (`kvstore-prefix`, default `cilium-cni`);
docs/kvstore.md draws who writes and who watches each part:

    PREFIX/identities/v1/id/<N>                {"v":1,"labels":TEXT}     no lease
    PREFIX/identities/v1/labels/<TEXT>         {"v":1,"id":N}            no lease
    PREFIX/identities/v1/users/<N>/<node>      {"v":1}                   node's lease
    PREFIX/ip/v1/<prefix>                      {"v":1,"identity":N,"node":NAME}  owner's lease
    PREFIX/nodes/v1/<node>                     {"v":1,"name":..,"addresses":[..],"podCIDRs":[..],
                                                "version":..,"startedAt":..}      node's lease
    PREFIX/policies/v1/sources/<source>        {"v":1,"text":YAML}       no lease
    PREFIX/policies/v1/revision                {"v":1,"revision":N}      no lease
    PREFIX/services/v1/<frontend>              {"v":1,"service":{..}}    no lease
    PREFIX/leader/v1/gc                        {"v":1,"node":NAME}       holder's lease

TEXT is the canonical label set (`agent.labels.canonical`). An identity
exists while its `id` and `labels` keys do: both are created in one
transaction that fails if either exists, so two nodes racing for a new
label set end with one number. A node using it holds a `users` key under
its lease.

Values come from a shared store anyone with access can write: every value
is checked here (JSON object, schema version, types, size) and a bad one is
a ValueError naming the problem; the caller logs it with the key and skips
it, never applying part of it.
"""

import ipaddress
import json
import re

from agent import labels as lbl

SCHEMA = 1
MAX_VALUE = 1024 * 1024       # etcd refuses requests over 1.5 MiB by default
MAX_SMALL_VALUE = 16 * 1024   # anything but policy text
NODE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


class Layout:
    def __init__(self, prefix):
        self.root = prefix.strip("/") + "/"
        self.identities = self.root + "identities/v1/"
        self.ids = self.identities + "id/"
        self.labels = self.identities + "labels/"
        self.users = self.identities + "users/"
        self.ip = self.root + "ip/v1/"
        self.nodes = self.root + "nodes/v1/"
        self.policies = self.root + "policies/v1/"
        self.sources = self.policies + "sources/"
        self.policy_revision = self.policies + "revision"
        self.services = self.root + "services/v1/"
        self.gc_leader = self.root + "leader/v1/gc"

    def id_key(self, number):
        return "%s%d" % (self.ids, number)

    def labels_key(self, text):
        return self.labels + text

    def user_key(self, number, node):
        return "%s%d/%s" % (self.users, number, node)

    def users_of(self, number):
        return "%s%d/" % (self.users, number)

    def ip_key(self, prefix):
        return self.ip + prefix

    def node_key(self, node):
        return self.nodes + node

    def source_key(self, source):
        return self.sources + source

    def service_key(self, frontend):
        return self.services + frontend


def check_node_name(name):
    if not isinstance(name, str) or not NODE_NAME.match(name):
        raise ValueError("node name %r must be a DNS name: lower-case letters, digits, '-' and "
                         "'.', at most 253 characters" % (name,))
    return name


def encode(body):
    return json.dumps({"v": SCHEMA, **body}, separators=(",", ":"), sort_keys=True).encode()


def decode(raw, limit=MAX_SMALL_VALUE):
    """bytes -> dict with the right schema version, or ValueError."""
    if len(raw) > limit:
        raise ValueError("value of %d bytes is over the limit of %d" % (len(raw), limit))
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError("not JSON: %s" % exc) from None
    if not isinstance(body, dict):
        raise ValueError("not a JSON object")
    if body.get("v") != SCHEMA:
        raise ValueError("schema version %r, this agent reads %d" % (body.get("v"), SCHEMA))
    return body


def _field(body, name, kind, what):
    value = body.get(name)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ValueError("%s: field '%s' must be %s, not %r" % (what, name, kind.__name__, value))
    return value


def identity_number(text, what="identity"):
    if not text.isdigit() or not lbl.MIN_ENDPOINT_IDENTITY <= int(text) <= lbl.MAX_ENDPOINT_IDENTITY:
        raise ValueError("%s %r is not a number from %d to %d" % (
            what, text, lbl.MIN_ENDPOINT_IDENTITY, lbl.MAX_ENDPOINT_IDENTITY))
    return int(text)


def read_identity(key_tail, raw):
    """`id/<N>` -> (N, canonical labels text)."""
    number = identity_number(key_tail)
    text = _field(decode(raw), "labels", str, "identity %d" % number)
    try:
        labels = lbl.from_canonical(text)
    except ValueError as exc:
        raise ValueError("identity %d: labels %r: %s" % (number, text, exc)) from None
    if lbl.canonical(labels) != text:
        raise ValueError("identity %d: labels %r are not in canonical form" % (number, text))
    return number, text


def read_labels(raw):
    number = _field(decode(raw), "id", int, "label set")
    return identity_number(str(number))


def read_user(key_tail):
    """`<N>/<node>` -> (N, node)."""
    number, sep, node = key_tail.partition("/")
    if not sep:
        raise ValueError("user key %r: want <identity>/<node>" % key_tail)
    return identity_number(number), check_node_name(node)


def read_ip(key_tail, raw):
    """`<prefix>` -> (prefix, identity, node)."""
    try:
        net = ipaddress.ip_network(key_tail)
    except ValueError:
        raise ValueError("ip key %r is not a prefix" % key_tail) from None
    if str(net) != key_tail or net.prefixlen != net.max_prefixlen:
        raise ValueError("ip key %r: want a host prefix such as 10.0.0.1/32" % key_tail)
    body = decode(raw)
    identity = _field(body, "identity", int, "ip " + key_tail)
    if not (lbl.MIN_ENDPOINT_IDENTITY <= identity <= lbl.MAX_ENDPOINT_IDENTITY
            or identity in lbl.RESERVED_IDENTITIES):
        raise ValueError("ip %s: identity %d is neither reserved nor an endpoint identity"
                         % (key_tail, identity))
    node = check_node_name(_field(body, "node", str, "ip " + key_tail))
    return key_tail, identity, node


def read_node(key_tail, raw):
    name = check_node_name(key_tail)
    body = decode(raw)
    if _field(body, "name", str, "node " + name) != name:
        raise ValueError("node %s: name field %r differs from the key" % (name, body["name"]))
    out = {"name": name}
    for field in ("addresses", "podCIDRs"):
        items = _field(body, field, list, "node " + name)
        for item in items:
            try:
                ipaddress.ip_interface(item) if field == "addresses" else ipaddress.ip_network(item)
            except (TypeError, ValueError):
                raise ValueError("node %s: %s entry %r is invalid" % (name, field, item)) from None
        out[field] = list(items)
    out["version"] = str(body.get("version", ""))[:64]
    started = body.get("startedAt")
    out["startedAt"] = started if isinstance(started, (int, float)) else None
    return out


def read_source(key_tail, raw):
    if not key_tail:
        raise ValueError("policy source key has no name")
    return key_tail, _field(decode(raw, MAX_VALUE), "text", str, "policy source " + key_tail)


def read_revision(raw):
    value = _field(decode(raw), "revision", int, "policy revision")
    if value < 0:
        raise ValueError("policy revision %d is negative" % value)
    return value


def read_service(key_tail, raw):
    service = _field(decode(raw), "service", dict, "service " + key_tail)
    return key_tail, service
