"""Load `cilium.io/v2` CiliumNetworkPolicy YAML/JSON into `Rule` objects.

Accepts what Cilium accepts: one object, a multi-document stream, a `List`
(or `CiliumNetworkPolicyList`) with `items`, each policy with `spec:` and/or
`specs:`. Every error is a `PolicyError` reading `FILE:LINE: reason`: YAML
syntax (from the parser's mark), schema violations (conf/cnp.schema.json;
the error's path is walked down the composed YAML node tree to its line),
and semantic checks (CIDRs, ports, selector keys, duplicate policy names,
duplicate mapping keys). A file with any error yields nothing.

This module only parses: it does not store rules (repository.py) or
allocate CIDR identities (the agent does, from `Rule.cidr_prefixes()`).
"""

import functools
import json
import os

import jsonschema
import yaml

from agent.policy import selector as S
from agent.policy.ports import MAX_PORT, PortSpec
from agent.policy.rule import EGRESS, INGRESS, L3_ONLY, Rule, RuleItem

SCHEMA_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                           "conf", "cnp.schema.json")
POLICY_KIND = "CiliumNetworkPolicy"
LIST_KINDS = ("List", "CiliumNetworkPolicyList")
SUFFIXES = (".yaml", ".yml", ".json")
SECTIONS = ((INGRESS, False, "ingress", "from"), (INGRESS, True, "ingressDeny", "from"),
            (EGRESS, False, "egress", "to"), (EGRESS, True, "egressDeny", "to"))
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class PolicyError(Exception):
    """A rejected policy file: `FILE:LINE: reason` (`FILE: reason` without a line)."""

    def __init__(self, file, line, reason):
        self.file, self.line, self.reason = file, line, reason
        super().__init__("%s:%d: %s" % (file, line, reason) if line else "%s: %s" % (file, reason))


@functools.cache
def _validators():
    """The schema's policy and list validators (read once; immutable after)."""
    with open(SCHEMA_PATH) as f:
        schema = json.load(f)
    cls = jsonschema.Draft202012Validator

    def sub(name):
        return cls(dict(schema, **{"$ref": "#/$defs/" + name}))
    return sub("policy"), sub("list")


def path_text(path):
    out = ""
    for p in path:
        out += "[%d]" % p if isinstance(p, int) else ("." if out else "") + str(p)
    return out or "document"


class _Doc:
    """One YAML document: its data and node tree, and line lookup by path."""

    def __init__(self, node, data):
        self.node, self.data = node, data

    def line(self, path):
        node, line = self.node, self.node.start_mark.line + 1
        for step in path:
            if isinstance(node, yaml.MappingNode):
                found = [(k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == str(step)]
                if not found:
                    break
                key, node = found[-1]
                line = key.start_mark.line + 1
            elif isinstance(node, yaml.SequenceNode) and isinstance(step, int) and step < len(node.value):
                node = node.value[step]
                line = node.start_mark.line + 1
            else:
                break
        return line


class _Parser:
    def __init__(self, filename, progress=None):
        self.filename = filename
        # progress(pass, offset): after each document, "read" (YAML) then
        # "check" (rules), with the character offset where it ends
        self.progress = progress
        self.doc = None
        self.context = ""  # "policy 'NAME': " once the policy's name is known

    def fail(self, path, reason, with_path=True):
        where = path_text(path) + ": " if with_path and path else ""
        raise PolicyError(self.filename, self.doc.line(path), self.context + where + reason)

    # -- documents ---------------------------------------------------------

    def documents(self, text):
        loader = _LOADER(text)
        docs = []
        try:
            while loader.check_node():
                node = loader.get_node()
                if node is None:
                    continue
                self.doc = _Doc(node, None)
                self.check_duplicate_keys(node, (), set())
                docs.append(_Doc(node, loader.construct_document(node)))
                if self.progress is not None:
                    self.progress("read", node.end_mark.index)
        except yaml.reader.ReaderError as exc:
            line = text[:exc.position].count("\n") + 1 if isinstance(exc.position, int) else 0
            raise PolicyError(self.filename, line, "invalid YAML: unacceptable character #x%04x: %s"
                              % (exc.character if isinstance(exc.character, int) else 0, exc.reason)) from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
            problem = getattr(exc, "problem", None) or str(exc)
            context = getattr(exc, "context", None)
            reason = "invalid YAML: %s" % problem + (" (%s)" % context if context else "")
            raise PolicyError(self.filename, mark.line + 1 if mark else 0, reason) from None
        finally:
            loader.dispose()
        return docs

    def check_duplicate_keys(self, node, path, visited, ancestors=()):
        """Duplicate mapping keys (PyYAML would keep the last silently), recursive aliases."""
        if id(node) in ancestors:
            raise PolicyError(self.filename, node.start_mark.line + 1, "recursive YAML alias")
        if id(node) in visited:  # an alias of a node already checked
            return
        visited.add(id(node))
        ancestors = ancestors + (id(node),)
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value != "<<":
                    if key.value in seen:
                        raise PolicyError(self.filename, key.start_mark.line + 1,
                                          "%sduplicate key '%s'" % (
                                              path_text(path) + ": " if path else "", key.value))
                    seen.add(key.value)
                self.check_duplicate_keys(value, path + (getattr(key, "value", "?"),), visited, ancestors)
        elif isinstance(node, yaml.SequenceNode):
            for i, value in enumerate(node.value):
                self.check_duplicate_keys(value, path + (i,), visited, ancestors)

    def parse(self, text):
        rules, names = [], {}
        for doc in self.documents(text):
            self.doc, self.context = doc, ""
            if self.progress is not None:
                self.progress("check", doc.node.end_mark.index)
            if doc.data is None:
                continue
            for path, obj in self.policies(doc.data):
                self.context = _context(obj)
                self.validate(_validators()[0], obj, path)
                meta = obj["metadata"]
                name, namespace = meta["name"], meta.get("namespace", "")
                self.context = "policy '%s': " % name
                key = (namespace, name)
                if key in names:
                    self.fail(path + ("metadata", "name"), "duplicate policy name (first at line %d)" % names[key],
                              with_path=False)
                names[key] = self.doc.line(path + ("metadata", "name"))
                if "spec" not in obj and "specs" not in obj:
                    self.fail(path, "policy has neither spec nor specs", with_path=False)
                specs = []
                if "spec" in obj:
                    specs.append((path + ("spec",), obj["spec"]))
                specs.extend((path + ("specs", i), s) for i, s in enumerate(obj.get("specs") or ()))
                for index, (spath, spec) in enumerate(specs):
                    rules.append(self.rule(spec, spath, name, namespace, index))
        return rules

    def policies(self, data):
        if not isinstance(data, dict):
            self.fail((), "a policy document must be an object, not %s" % _type_name(data))
        kind = data.get("kind")
        if kind in LIST_KINDS:
            self.validate(_validators()[1], data, ())
            return [(("items", i), item) for i, item in enumerate(data["items"])]
        if "kind" not in data:
            self.fail((), "missing required field 'kind'")
        if kind != POLICY_KIND:
            self.fail(("kind",), "kind %s is not supported (want %s or a List of them)" % (
                json.dumps(kind), POLICY_KIND), with_path=False)
        return [((), data)]

    # -- schema ------------------------------------------------------------

    def validate(self, validator, obj, base):
        found = []
        for err in validator.iter_errors(obj):
            path, reason = _explain(err)
            path = base + path
            found.append((self.doc.line(path), path_text(path), path, reason))
        if found:
            found.sort(key=lambda f: (f[0], f[1]))
            _, _, path, reason = found[0]
            self.fail(path, reason)

    # -- semantics ---------------------------------------------------------

    def rule(self, spec, path, name, namespace, index):
        es = self.selector(spec["endpointSelector"], path + ("endpointSelector",)).scoped(namespace, force=True)
        items = []
        for direction, deny, section, prefix in SECTIONS:
            for i, item in enumerate(spec.get(section) or ()):
                items.append(self.item(item, path + (section, i), direction, deny, prefix, namespace))
        labels = frozenset((lbl.get("source", ""), lbl["key"], lbl.get("value", ""))
                           for lbl in spec.get("labels") or ())
        return Rule(name=name, namespace=namespace, source=self.filename, line=self.doc.line(path),
                    endpoint_selector=es, items=tuple(items),
                    has_ingress="ingress" in spec or "ingressDeny" in spec,
                    has_egress="egress" in spec or "egressDeny" in spec,
                    description=spec.get("description", ""), labels=labels, index=index, spec=spec)

    def item(self, item, path, direction, deny, prefix, namespace):
        peers = {}
        for i, sel in enumerate(item.get(prefix + "Endpoints") or ()):
            s = self.selector(sel, path + (prefix + "Endpoints", i)).scoped(namespace)
            peers.setdefault(s.key, s)
        for i, cidr in enumerate(item.get(prefix + "CIDR") or ()):
            s = S.CIDRSelector(self.prefix(cidr, path + (prefix + "CIDR", i)))
            peers.setdefault(s.key, s)
        for i, cset in enumerate(item.get(prefix + "CIDRSet") or ()):
            p = path + (prefix + "CIDRSet", i)
            net = self.prefix(cset["cidr"], p + ("cidr",))
            excepts = [self.prefix(e, p + ("except", j)) for j, e in enumerate(cset.get("except") or ())]
            try:
                s = S.CIDRSelector(net, excepts)
            except ValueError as exc:
                self.fail(p + ("except",), str(exc))
            peers.setdefault(s.key, s)
        for entity in item.get(prefix + "Entities") or ():
            s = S.entity_selector(entity)
            peers.setdefault(s.key, s)
        ports = None
        if item.get("toPorts"):
            ports = []
            for i, port_rule in enumerate(item["toPorts"]):
                for j, pp in enumerate(port_rule.get("ports") or ()):
                    ports.append(self.port(pp, path + ("toPorts", i, "ports", j)))
            ports = tuple(dict.fromkeys(ports))
            if not peers:
                peers[S.WILDCARD.key] = S.WILDCARD  # toPorts alone: from/to everyone
        if ports is None:
            l4 = L3_ONLY
        else:
            l4 = tuple(dict.fromkeys(b for p in ports for b in p.blocks()))
        return RuleItem(direction=direction, deny=deny, peers=tuple(peers.values()), ports=ports, l4=l4)

    def selector(self, obj, path):
        labels, exprs = obj.get("matchLabels") or {}, obj.get("matchExpressions") or ()
        for key, value in labels.items():
            try:
                S.LabelSelector.from_k8s({key: value})
            except ValueError as exc:
                self.fail(path + ("matchLabels", key), str(exc))
        for i, expr in enumerate(exprs):
            try:
                S.LabelSelector.from_k8s(None, [expr])
            except ValueError as exc:
                self.fail(path + ("matchExpressions", i), str(exc))
        return S.LabelSelector.from_k8s(labels, exprs)

    def prefix(self, text, path):
        try:
            return S.parse_prefix(text)
        except ValueError as exc:
            self.fail(path, str(exc))

    def port(self, pp, path):
        raw = pp["port"]
        if isinstance(raw, str):
            if not raw.strip().isdigit():
                self.fail(path + ("port",), "named port '%s' is not supported: use a number" % raw)
            raw = int(raw)
        if not 0 <= raw <= MAX_PORT:
            self.fail(path + ("port",), "port %d out of range 0..%d" % (raw, MAX_PORT))
        end = pp.get("endPort")
        if end is not None:
            if raw == 0:
                self.fail(path + ("endPort",), "endPort needs a port of at least 1")
            if not 0 <= end <= MAX_PORT:
                self.fail(path + ("endPort",), "endPort %d out of range 0..%d" % (end, MAX_PORT))
            if end < raw:
                self.fail(path + ("endPort",), "endPort %d is below port %d" % (end, raw))
            if end == raw:
                end = None
        return PortSpec(pp.get("protocol", "ANY"), raw, end)


def _context(obj):
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    name = meta.get("name") if isinstance(meta, dict) else None
    return "policy '%s': " % name if isinstance(name, str) else ""


def _type_name(value):
    return {dict: "an object", list: "a list", str: "a string", int: "an integer", float: "a number",
            bool: "a boolean", type(None): "null"}.get(type(value), type(value).__name__)


def _explain(err):
    """(path, lower-case reason) for one jsonschema error."""
    path = tuple(err.absolute_path)
    v, inst = err.validator, err.instance
    if v == "additionalProperties":
        allowed = err.schema.get("properties", {})
        extra = sorted(k for k in inst if k not in allowed)[0]
        unsupported = err.schema.get("x-unsupported", {})
        if extra in unsupported:
            return path + (extra,), "field '%s' (%s) is not supported by cilium-cni" % (extra, unsupported[extra])
        return path + (extra,), "unknown field '%s' (known: %s)" % (extra, ", ".join(sorted(allowed)))
    if v == "required":
        missing = [r for r in err.validator_value if r not in inst]
        return path, "missing required field '%s'" % missing[0]
    if v == "type":
        want = err.validator_value if isinstance(err.validator_value, list) else [err.validator_value]
        names = {"object": "an object", "array": "a list", "string": "a string", "integer": "an integer",
                 "null": "null", "boolean": "a boolean", "number": "a number"}
        return path, "must be %s, not %s" % (" or ".join(names.get(w, w) for w in want), _type_name(inst))
    if v == "enum":
        return path, "%s is not one of %s" % (json.dumps(inst), ", ".join(str(x) for x in err.validator_value))
    if v == "const":
        return path, "must be %s, not %s" % (json.dumps(err.validator_value), json.dumps(inst))
    if v == "pattern":
        return path, "%s is not a valid name (lower-case DNS name expected)" % json.dumps(inst)
    if v == "minLength":
        return path, "must not be empty"
    return path, err.message[:1].lower() + err.message[1:]


def parse_text(text, filename="<string>", progress=None):
    """All rules in `text` (YAML or JSON), or PolicyError; nothing partial.

    `progress(pass, offset)` hears of each document: pass "read" as the
    YAML is read, then "check" as its rules are built (offset: characters
    of `text` done)."""
    return _Parser(filename, progress).parse(text)


def policy_files(path):
    """The policy files of a directory, sorted: *.yaml, *.yml, *.json (no hidden files)."""
    try:
        names = sorted(os.listdir(path))
    except OSError as exc:
        raise PolicyError(path, 0, "cannot list policy directory: %s" % exc.strerror) from None
    return [os.path.join(path, n) for n in names
            if n.endswith(SUFFIXES) and not n.startswith(".") and os.path.isfile(os.path.join(path, n))]
