"""The agent's configuration: defaults, a YAML file, then command-line flags.

A key the agent does not know, or a value of the wrong type, is refused
with the file, the key and the reason: a typo must not silently fall back
to a default on a production node.
"""

import difflib
import ipaddress
import re

import yaml

from cni.attachment import DEFAULT_SOCKET

DEFAULTS = {
    "socket": DEFAULT_SOCKET,
    "state-dir": "/var/lib/cilium-cni",
    "bpf-root": "/sys/fs/bpf/cilium-cni",
    "log-file": "/var/log/cilium-cni-agent.log",
    "log-level": "info",
    "queue-size": 256,
    "policy-dir": "",
    "identity-grace-seconds": 300,
    "log-format": "text",
    "metrics-address": "127.0.0.1:9962",
    "socket-lb": True,
    "cgroup-root": "/sys/fs/cgroup/unified",
    "nodeport-devices": [],
    "allow-localhost": "always",
}
_TYPE_NAMES = {str: "string", int: "integer", bool: "boolean", list: "list of device names"}
_TYPES = {"socket": str, "state-dir": str, "bpf-root": str, "log-file": str,
          "log-level": str, "queue-size": int, "policy-dir": str, "identity-grace-seconds": int,
          "log-format": str, "metrics-address": str, "socket-lb": bool, "cgroup-root": str,
          "nodeport-devices": list, "allow-localhost": str}
_LEVELS = ("debug", "info", "warning", "error")
_LOG_FORMATS = ("text", "json")
_ALLOW_LOCALHOST = ("always", "policy")


class ConfigError(Exception):
    pass


class AgentConfig:
    __slots__ = ("socket", "state_dir", "bpf_root", "log_file", "log_level", "queue_size",
                 "policy_dir", "identity_grace_seconds", "log_format", "metrics_address",
                 "socket_lb", "cgroup_root", "nodeport_devices", "allow_localhost")

    def __init__(self, values):
        self.socket = values["socket"]
        self.state_dir = values["state-dir"]
        self.bpf_root = values["bpf-root"]
        self.log_file = values["log-file"]
        self.log_level = values["log-level"]
        self.queue_size = values["queue-size"]
        self.policy_dir = values["policy-dir"]
        self.identity_grace_seconds = values["identity-grace-seconds"]
        self.log_format = values["log-format"]
        self.metrics_address = values["metrics-address"]
        self.socket_lb = values["socket-lb"]
        self.cgroup_root = values["cgroup-root"]
        self.nodeport_devices = list(values["nodeport-devices"])
        self.allow_localhost = values["allow-localhost"]

    def as_dict(self):
        return {k.replace("_", "-"): getattr(self, k) for k in self.__slots__}


def _check(values, where):
    for key, value in values.items():
        if key not in _TYPES:
            close = difflib.get_close_matches(str(key), _TYPES, 1)
            hint = "did you mean '%s'?" % close[0] if close else "known: %s" % ", ".join(
                sorted(_TYPES))
            raise ConfigError("%s: unknown key '%s' (%s)" % (where, key, hint))
        want = _TYPES[key]
        if not isinstance(value, want) or (isinstance(value, bool) and want is not bool) or (
                want is list and not all(isinstance(x, str) and x for x in value)):
            raise ConfigError("%s: key '%s' must be a %s, not %r"
                              % (where, key, _TYPE_NAMES[want], value))
    if "log-level" in values and values["log-level"] not in _LEVELS:
        raise ConfigError("%s: key 'log-level' must be one of %s, not %r"
                          % (where, ", ".join(_LEVELS), values["log-level"]))
    if "log-format" in values and values["log-format"] not in _LOG_FORMATS:
        raise ConfigError("%s: key 'log-format' must be one of %s, not %r"
                          % (where, ", ".join(_LOG_FORMATS), values["log-format"]))
    if "allow-localhost" in values and values["allow-localhost"] not in _ALLOW_LOCALHOST:
        raise ConfigError("%s: key 'allow-localhost' must be one of %s, not %r"
                          % (where, ", ".join(_ALLOW_LOCALHOST), values["allow-localhost"]))
    if values.get("metrics-address"):
        try:
            listen_address(values["metrics-address"])
        except ValueError as exc:
            raise ConfigError("%s: key 'metrics-address' %s" % (where, exc)) from None
    if "queue-size" in values and not 1 <= values["queue-size"] <= 100000:
        raise ConfigError("%s: key 'queue-size' must be between 1 and 100000" % where)
    if "identity-grace-seconds" in values and values["identity-grace-seconds"] < 0:
        raise ConfigError("%s: key 'identity-grace-seconds' must not be negative" % where)
    for key in ("socket", "state-dir", "bpf-root", "policy-dir", "cgroup-root"):
        if values.get(key) and not values[key].startswith("/"):
            raise ConfigError("%s: key '%s' must be an absolute path, not %r"
                              % (where, key, values[key]))
    if "bpf-root" in values and re.search(r'["\\\s]', values["bpf-root"]):
        # It ends up inside a C string literal when the programs are compiled.
        raise ConfigError("%s: key 'bpf-root' must not contain quotes, backslashes or spaces, "
                          "not %r" % (where, values["bpf-root"]))


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
        _check(data, path)
        values.update(data)
    extra = {k: v for k, v in (overrides or {}).items() if v is not None}
    _check(extra, "command line")
    values.update(extra)
    return AgentConfig(values)
