"""The agent's configuration: defaults, a YAML file, then command-line flags.

Every key is declared once, as a field of `AgentConfig`: its type, default,
meaning and limits (conf/agent.yaml shows the same, tests keep them in
step). A key the agent does not know, or a value of the wrong type, is
refused with the file, the key and the reason: a typo must not silently
fall back to a default on a production node.
"""

import dataclasses
import difflib
import ipaddress
import re

import yaml

from cni.attachment import DEFAULT_SOCKET


class ConfigError(Exception):
    pass


def _key(default, doc, *, kind=None, choices=None, minimum=None, maximum=None, path=False,
         check=None):
    """One key: its default, what it is for (the comment in conf/agent.yaml),
    and its limits beyond its type. `kind` words the type in errors."""
    meta = {"doc": doc, "kind": kind, "choices": choices, "minimum": minimum,
            "maximum": maximum, "path": path, "check": check}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _metrics_address(value):
    if value:
        listen_address(value)


def _node_name(value):
    if value:
        from agent.kvstore.layout import check_node_name
        check_node_name(value)


def _prefixes(value, kind):
    for item in value:
        try:
            ipaddress.ip_interface(item) if kind == "address" else ipaddress.ip_network(item)
        except ValueError:
            raise ValueError("entry %r is not an IP %s" % (item, kind)) from None


def _kvstore_prefix(value):
    if not value.strip("/") or re.search(r"\s", value):
        raise ValueError("must be a non-empty key prefix without spaces, not %r" % value)


def _c_string(value):
    if re.search(r'["\\\s]', value):
        # It ends up inside a C string literal when the programs are compiled.
        raise ValueError("must not contain quotes, backslashes or spaces, not %r" % value)


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    """Every key of the agent's config, declared once: name (the field's,
    with '-' for '_'), type, default, meaning and limits."""

    socket: str = _key(DEFAULT_SOCKET, "the API; root-only (0600)",
                       path=True)
    state_dir: str = _key("/var/lib/cilium-cni", "the endpoint store (sqlite)", path=True)
    bpf_root: str = _key("/sys/fs/bpf/cilium-cni", "pinned programs and maps", path=True,
                         check=_c_string)
    log_file: str = _key("/var/log/cilium-cni-agent.log", "'' logs to stderr")
    log_level: str = _key("info", "debug, info, warning, error",
                          choices=("debug", "info", "warning", "error"))
    queue_size: int = _key(256, "endpoint changes waiting for the worker", minimum=1,
                           maximum=100000)
    policy_dir: str = _key("", "CiliumNetworkPolicy files watched here ('' = none)", path=True)
    identity_grace_seconds: int = _key(300, "an unused identity keeps its number this long",
                                       minimum=0)
    log_format: str = _key("text", "text, or json (one object per line)",
                           choices=("text", "json"))
    metrics_address: str = _key("127.0.0.1:9962", "Prometheus /metrics; '' disables",
                                check=_metrics_address)
    socket_lb: bool = _key(True, "services in connect()/sendmsg() (cgroup v2 hooks)")
    cgroup_root: str = _key("/sys/fs/cgroup/unified",
                            "the cgroup v2 hierarchy the socket hooks attach to", path=True)
    nodeport_devices: list = _key([], "node devices where NodePort services are served",
                                  kind="list of device names")
    allow_localhost: str = _key("always", "the node may always reach its pods (kubelet "
                                "probes); 'policy': only if a rule allows host",
                                choices=("always", "policy"))

    # A cluster through etcd (docs/kvstore.md); '' keeps the node on its own.
    kvstore: str = _key("", "'' (one node, sqlite) or etcd (a cluster sharing identities, "
                        "ipcache, policy and services)", choices=("", "etcd"))
    kvstore_endpoints: list = _key([], "etcd client URLs (http://IP:2379 or https://...)",
                                   kind="list of URLs")
    kvstore_prefix: str = _key("cilium-cni", "every key of the cluster is under this prefix",
                               check=_kvstore_prefix)
    kvstore_ca_file: str = _key("", "CA bundle that signed etcd's certificate", path=True)
    kvstore_cert_file: str = _key("", "client certificate for etcd", path=True)
    kvstore_key_file: str = _key("", "client certificate's key", path=True)
    kvstore_timeout_seconds: int = _key(2, "deadline of one etcd call (a new identity fails "
                                        "retryably after it)", minimum=1, maximum=60)
    kvstore_lease_ttl: int = _key(15, "seconds after an agent stops refreshing until its keys "
                                  "leave etcd (a restart within it keeps them)", minimum=3,
                                  maximum=3600)
    node_name: str = _key("", "this node's name in the cluster ('' = the host name)",
                          check=_node_name)
    node_addresses: list = _key([], "this node's addresses shown in 'node list' ([] = its own)",
                                kind="list of addresses",
                                check=lambda v: _prefixes(v, "address"))
    node_pod_cidrs: list = _key([], "the pod CIDRs of this node, shown in 'node list'",
                                kind="list of CIDRs", check=lambda v: _prefixes(v, "network"))

    def as_dict(self):
        return {_name(f): getattr(self, f.name) for f in dataclasses.fields(self)}


def _name(field):
    return field.name.replace("_", "-")


KEYS = {_name(f): f for f in dataclasses.fields(AgentConfig)}
DEFAULTS = AgentConfig().as_dict()
_TYPE_WORDS = {str: "a string", int: "an integer", bool: "a boolean", list: "a list"}


def describe():
    """[(key, type, default, doc)] of every key, as declared."""
    return [(key, f.type.__name__, DEFAULTS[key], f.metadata["doc"]) for key, f in KEYS.items()]


def validate(values, where="config"):
    """Refuse unknown keys and wrong values, naming `where`, the key and why
    (ConfigError); what `cilium-cni check` can call on a config it reads."""
    for key, value in values.items():
        field = KEYS.get(key)
        if field is None:
            close = difflib.get_close_matches(str(key), KEYS, 1)
            hint = "did you mean '%s'?" % close[0] if close else "known: %s" % ", ".join(
                sorted(KEYS))
            raise ConfigError("%s: unknown key '%s' (%s)" % (where, key, hint))
        problem = _problem(field, value)
        if problem:
            raise ConfigError("%s: key '%s' %s" % (where, key, problem))


def _problem(field, value):
    meta, want = field.metadata, field.type
    if not isinstance(value, want) or (isinstance(value, bool) and want is not bool) or (
            want is list and not all(isinstance(x, str) and x for x in value)):
        return "must be %s, not %r" % (
            "a %s" % meta["kind"] if meta["kind"] else _TYPE_WORDS[want], value)
    if meta["choices"] and value not in meta["choices"]:
        return "must be one of %s, not %r" % (", ".join(meta["choices"]), value)
    low, high = meta["minimum"], meta["maximum"]
    if low is not None and high is not None and not low <= value <= high:
        return "must be between %d and %d" % (low, high)
    if low == 0 and value < 0:
        return "must not be negative"
    if meta["path"] and value and not value.startswith("/"):
        return "must be an absolute path, not %r" % value
    if meta["check"]:
        try:
            meta["check"](value)
        except ValueError as exc:
            return str(exc)
    return None


def listen_address(text):
    """'127.0.0.1:9962' or '[::1]:9962' -> (host, port); port 0 picks a free one."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError("must be IP:PORT (e.g. 127.0.0.1:9962, [::1]:9962; '' disables), "
                         "not %r" % text) from None
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError("must end in a port from 0 to 65535, not %r" % text)
    return host, int(port)


def load(path=None, overrides=None):
    values = dict(DEFAULTS)
    if path:
        try:
            with open(path) as f:
                data = yaml.safe_load(f)
        except OSError as exc:
            raise ConfigError("%s: cannot read: %s" % (path, exc.strerror)) from None
        except UnicodeDecodeError as exc:
            raise ConfigError("%s: invalid YAML: not UTF-8 text (%s)"
                              % (path, exc.reason)) from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = " line %d:" % (mark.line + 1) if mark else ""
            raise ConfigError("%s:%s invalid YAML: %s" % (
                path, line, getattr(exc, "problem", None) or exc)) from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError("%s: must be a mapping of keys to values" % path)
        validate(data, path)
        values.update(data)
    extra = {k: v for k, v in (overrides or {}).items() if v is not None}
    validate(extra, "command line")
    values.update(extra)
    if values["kvstore"] == "etcd" and not values["kvstore-endpoints"]:
        raise ConfigError("kvstore: etcd needs kvstore-endpoints (the etcd client URLs)")
    return AgentConfig(**{f.name: values[key] for key, f in KEYS.items()})
