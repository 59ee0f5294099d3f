"""A Kubernetes NetworkPolicy → the equivalent CiliumNetworkPolicy → rules.

Translated as Cilium's agent translates `networking.k8s.io/v1`
NetworkPolicy: one NetworkPolicy becomes one CiliumNetworkPolicy spec
(`to_cnp`), which then goes through the one policy parser
(`agent/policy/parse.py`), so both kinds end as the same `Rule` objects
(`rules`). The mapping (docs/policy.md, "Kubernetes NetworkPolicy"):

- `podSelector` → `endpointSelector` with the policy's namespace
  (`k8s:io.kubernetes.pod.namespace=NS`); `{}` is every pod of it. Every
  key of a NetworkPolicy selector is a Kubernetes label (`k8s:` source).
- a `from`/`to` peer → one ingress/egress item each, with the rule's
  ports: `podSelector` alone = those pods of the policy's namespace;
  `namespaceSelector` = pods whose namespace matches (pods carry their
  namespace's labels as `k8s:io.cilium.k8s.namespace.labels.KEY`), with
  `podSelector` ANDed in; `{}` = every namespace (pods only: an Exists on
  the namespace key keeps world, host and CIDR identities out); `ipBlock` →
  `fromCIDRSet`/`toCIDRSet` with its `except`.
- no peers (`from` empty or missing) → every remote (`all` entity); no
  ports → every port and protocol; a port without `port` → every port of
  its protocol; `protocol` defaults to TCP; `endPort` → a range.
- `policyTypes` → the directions enforced; a listed direction without
  rules denies all of it. Without `policyTypes`: Ingress, plus Egress when
  `egress` has rules. Rules of a direction not listed are ignored, as the
  API defines (Cilium 1.6 would enforce them).

Refused whole with `NetworkPolicyError` (naming the policy and the field):
named ports (the agent does not know pods' container ports; Cilium 1.6
did not support them either), unknown fields anywhere in the spec (a
newer API's field could change the meaning), and everything the API
itself rejects that reaches us (bad CIDRs, ports, selectors, peers mixing
ipBlock with selectors). This module neither watches nor stores.
"""

import json

from agent import labels as L
from agent.policy import selector as S
from agent.policy.parse import PolicyError, parse_text

API_VERSION = "networking.k8s.io/v1"
KIND = "NetworkPolicy"
INGRESS, EGRESS = "Ingress", "Egress"
PROTOCOLS = ("TCP", "UDP", "SCTP")
# The rule labels Cilium gives a rule derived from a NetworkPolicy.
POLICY_LABEL_PREFIX = "io.cilium.k8s.policy."
_K8S = L.SOURCE_K8S + ":"
_SELECTOR_FIELDS = ("matchLabels", "matchExpressions")


class NetworkPolicyError(ValueError):
    """A NetworkPolicy the agent cannot enforce (or that is malformed).

    `namespace`, `name`: the policy; `field`: the path in the object
    (`spec.ingress[0].ports[1].port`); `reason`: lower-case text.
    """

    def __init__(self, namespace, name, field, reason):
        self.namespace, self.name, self.field, self.reason = namespace, name, field, reason
        super().__init__("networkpolicy '%s/%s': %s%s" % (namespace, name, field + ": " if field else "", reason))


def source_of(namespace, name):
    """The `Rule.source` of a NetworkPolicy's rules (where `policy get` says they came from)."""
    return "k8s:networkpolicy/%s/%s" % (namespace, name)


def identify(obj):
    """(namespace, name) of a NetworkPolicy object; the namespace defaults to `default`."""
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta["name"]:
        raise NetworkPolicyError("?", "?", "metadata.name", "missing or not a string")
    namespace = meta.get("namespace") or "default"
    if not isinstance(namespace, str):
        raise NetworkPolicyError("?", meta["name"], "metadata.namespace", "not a string")
    return namespace, meta["name"]


def to_cnp(obj):
    """The CiliumNetworkPolicy (a dict) equivalent to NetworkPolicy `obj`, or NetworkPolicyError."""
    return _Translator(obj).policy()


def rules(obj, source=None):
    """The parsed `Rule`s of NetworkPolicy `obj` (one), or NetworkPolicyError; nothing partial.

    `source` is the rules' `source` (default `source_of(namespace, name)`).
    """
    cnp = to_cnp(obj)
    namespace, name = identify(obj)
    try:
        return parse_text(json.dumps(cnp, indent=1), source or source_of(namespace, name))
    except PolicyError as exc:  # a translation the parser refuses: say so, never apply half
        raise NetworkPolicyError(namespace, name, "spec", "the translated policy was refused: %s"
                                 % exc.reason) from None


def _path(base, step):
    return "%s[%d]" % (base, step) if isinstance(step, int) else "%s.%s" % (base, step)


class _Translator:
    def __init__(self, obj):
        if not isinstance(obj, dict):
            raise NetworkPolicyError("?", "?", "", "a NetworkPolicy must be an object")
        self.obj = obj
        self.namespace, self.name = identify(obj)

    def fail(self, field, reason):
        raise NetworkPolicyError(self.namespace, self.name, field, reason)

    def typed(self, value, kind, field, what):
        if not isinstance(value, kind) or isinstance(value, bool):
            self.fail(field, "must be %s" % what)
        return value

    def known(self, obj, fields, where):
        self.typed(obj, dict, where, "an object")
        extra = sorted(set(obj) - set(fields))
        if extra:
            self.fail(_path(where, extra[0]), "unknown field (known: %s): refused, since it could change "
                      "what the policy means" % ", ".join(fields))

    # -- the object ---------------------------------------------------------

    def policy(self):
        obj = self.obj
        if obj.get("apiVersion", API_VERSION) != API_VERSION:
            self.fail("apiVersion", "%s is not %s" % (json.dumps(obj["apiVersion"]), API_VERSION))
        if obj.get("kind", KIND) != KIND:
            self.fail("kind", "%s is not %s" % (json.dumps(obj["kind"]), KIND))
        spec = obj.get("spec")
        self.known(spec, ("podSelector", "policyTypes", "ingress", "egress"), "spec")
        if "podSelector" not in spec:
            self.fail("spec.podSelector", "missing (use {} for every pod of the namespace)")
        pod_selector = self.selector(spec["podSelector"], "spec.podSelector")
        pod_selector.setdefault("matchLabels", {})[_K8S + L.NAMESPACE_KEY] = self.namespace
        out = {"endpointSelector": pod_selector}
        for direction in self.directions(spec):
            section = direction.lower()
            items = self.typed(spec.get(section) or [], list, "spec." + section, "a list")
            out[section] = [x for i, rule in enumerate(items)
                            for x in self.rule(rule, direction, _path("spec." + section, i))]
        uid = (obj.get("metadata") or {}).get("uid")
        labels = [("derived-from", KIND), ("name", self.name), ("namespace", self.namespace)]
        if isinstance(uid, str) and uid:
            labels.append(("uid", uid))
        out["labels"] = [{"source": L.SOURCE_K8S, "key": POLICY_LABEL_PREFIX + k, "value": v} for k, v in labels]
        return {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
                "metadata": {"name": self.name, "namespace": self.namespace}, "spec": out}

    def directions(self, spec):
        types = spec.get("policyTypes")
        if not types:  # unset (or empty): Ingress always, Egress when there are egress rules
            egress = spec.get("egress")
            return (INGRESS, EGRESS) if isinstance(egress, list) and egress else (INGRESS,)
        self.typed(types, list, "spec.policyTypes", "a list")
        for i, t in enumerate(types):
            if t not in (INGRESS, EGRESS):
                self.fail("spec.policyTypes[%d]" % i, "%s is not Ingress or Egress" % json.dumps(t))
        return tuple(t for t in (INGRESS, EGRESS) if t in types)

    # -- rules and peers -----------------------------------------------------

    def rule(self, rule, direction, where):
        peers_field, prefix = ("from", "from") if direction == INGRESS else ("to", "to")
        self.known(rule, (peers_field, "ports"), where)
        ports = self.typed(rule.get("ports") or [], list, _path(where, "ports"), "a list")
        port_rules = [self.port(p, _path(_path(where, "ports"), i)) for i, p in enumerate(ports)]
        peers = self.typed(rule.get(peers_field) or [], list, _path(where, peers_field), "a list")
        if peers:
            items = [self.peer(p, prefix, _path(_path(where, peers_field), i)) for i, p in enumerate(peers)]
        else:  # no peers: from/to everyone, the world included
            items = [{prefix + "Entities": ["all"]}]
        if port_rules:  # no ports: every port and protocol
            for item in items:
                item["toPorts"] = [{"ports": port_rules}]
        return items

    def peer(self, peer, prefix, where):
        self.known(peer, ("podSelector", "namespaceSelector", "ipBlock"), where)
        if "ipBlock" in peer:
            if len(peer) > 1:
                self.fail(where, "ipBlock cannot be combined with podSelector or namespaceSelector")
            return {prefix + "CIDRSet": [self.ip_block(peer["ipBlock"], _path(where, "ipBlock"))]}
        if not peer:
            self.fail(where, "a peer needs podSelector, namespaceSelector or ipBlock")
        if "namespaceSelector" in peer:
            sel = self.selector(peer["namespaceSelector"], _path(where, "namespaceSelector"), L.NAMESPACE_LABELS_PREFIX)
            # Pods only, in any namespace the labels allow: this also keeps
            # the parser from scoping the peer to the policy's namespace.
            sel.setdefault("matchExpressions", []).append({"key": _K8S + L.NAMESPACE_KEY, "operator": S.EXISTS})
            if "podSelector" in peer:
                pods = self.selector(peer["podSelector"], _path(where, "podSelector"))
                labels = sel.setdefault("matchLabels", {})
                for key, value in pods.get("matchLabels", {}).items():
                    if labels.setdefault(key, value) != value:  # both name the key: both must hold
                        sel["matchExpressions"].append({"key": key, "operator": S.IN, "values": [value]})
                sel["matchExpressions"] += pods.get("matchExpressions", [])
        else:
            sel = self.selector(peer["podSelector"], _path(where, "podSelector"))
            sel.setdefault("matchLabels", {})[_K8S + L.NAMESPACE_KEY] = self.namespace
        return {prefix + "Endpoints": [sel]}

    def ip_block(self, block, where):
        self.known(block, ("cidr", "except"), where)
        if "cidr" not in block:
            self.fail(_path(where, "cidr"), "missing")
        cidr = self.typed(block["cidr"], str, _path(where, "cidr"), "a string")
        excepts = self.typed(block.get("except") or [], list, _path(where, "except"), "a list")
        try:
            net = S.parse_prefix(cidr)
        except ValueError as exc:
            self.fail(_path(where, "cidr"), str(exc))
        nets = []
        for i, e in enumerate(excepts):
            try:
                nets.append(S.parse_prefix(e))
                S.CIDRSelector(net, nets[-1:])
            except ValueError as exc:
                self.fail(_path(_path(where, "except"), i), str(exc))
        out = {"cidr": cidr}
        if excepts:
            out["except"] = list(excepts)
        return out

    def port(self, port, where):
        self.known(port, ("protocol", "port", "endPort"), where)
        protocol = port.get("protocol") or "TCP"
        if protocol not in PROTOCOLS:
            self.fail(_path(where, "protocol"), "%s is not one of %s" % (json.dumps(protocol), ", ".join(PROTOCOLS)))
        number, end = port.get("port"), port.get("endPort")
        if isinstance(number, str):
            self.fail(_path(where, "port"), "named port '%s' is not supported: use a number (the agent does "
                      "not know the pods' container ports)" % number)
        if number is None:
            if end is not None:
                self.fail(_path(where, "endPort"), "endPort needs a port")
            return {"port": "0", "protocol": protocol}  # every port of the protocol
        self.typed(number, int, _path(where, "port"), "an integer or a port name")
        if not 1 <= number <= 65535:
            self.fail(_path(where, "port"), "port %d out of range 1..65535" % number)
        out = {"port": str(number), "protocol": protocol}
        if end is not None:
            self.typed(end, int, _path(where, "endPort"), "an integer")
            if not number <= end <= 65535:
                self.fail(_path(where, "endPort"), "endPort %d is not in %d..65535" % (end, number))
            out["endPort"] = end
        return out

    # -- selectors ------------------------------------------------------------

    def selector(self, sel, where, key_prefix=""):
        """A NetworkPolicy label selector as a CNP selector: every key a
        `k8s:` label, after `key_prefix` (namespace labels)."""
        self.known(sel, _SELECTOR_FIELDS, where)
        out = {}
        match_labels = self.typed(sel.get("matchLabels") or {}, dict, _path(where, "matchLabels"), "an object")
        for key, value in match_labels.items():
            self.check(_path(_path(where, "matchLabels"), key), {key: value}, None)
            out.setdefault("matchLabels", {})[_K8S + key_prefix + key] = value
        exprs = self.typed(sel.get("matchExpressions") or [], list, _path(where, "matchExpressions"), "a list")
        for i, expr in enumerate(exprs):
            at = _path(_path(where, "matchExpressions"), i)
            self.known(expr, ("key", "operator", "values"), at)
            self.check(at, None, [expr])
            translated = {"key": _K8S + key_prefix + expr["key"], "operator": expr["operator"]}
            if expr.get("values"):
                translated["values"] = list(expr["values"])
            out.setdefault("matchExpressions", []).append(translated)
        if key_prefix:  # the prefixed keys must pass too (a key may grow too long)
            try:
                S.LabelSelector.from_k8s(out.get("matchLabels"), out.get("matchExpressions"))
            except ValueError as exc:
                self.fail(where, str(exc))
        return out

    def check(self, where, match_labels, match_expressions):
        """The API's own selector rules; a key may not name a label source."""
        try:
            for expr in match_expressions or ():
                if not isinstance(expr.get("key"), str) or ":" in expr["key"]:
                    raise ValueError("bad selector key %r" % (expr.get("key"),))
                values = expr.get("values")
                if values is not None and not (isinstance(values, list) and all(isinstance(v, str) for v in values)):
                    raise ValueError("values of key '%s' must be a list of strings" % expr["key"])
            for key, value in (match_labels or {}).items():
                if ":" in key:
                    raise ValueError("bad selector key %r" % (key,))
                if not isinstance(value, str):
                    raise ValueError("value of key '%s' must be a string" % key)
            S.LabelSelector.from_k8s(match_labels, match_expressions)
        except ValueError as exc:
            self.fail(where, str(exc))
