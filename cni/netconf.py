"""The network configuration on stdin: decode, check every field this
plugin reads, and keep the whole document in `raw`.

prevResult is checked to be an object but is not converted or validated
here: the plugin calls `cni.result.convert`, which does both.

Two steps, so that the plugin can answer and log as the netconf asks even
when something else is wrong: `decode` (bytes or text -> a JSON object,
code 6) and `from_document` (every field, code 7 or 1); `reply_settings`
takes what it can from a decoded document that failed the second step.

Hot path: imports only `json` and `cni`.
"""

from cni import fastjson as json
from cni import version
from cni.attachment import DEFAULT_SOCKET as DEFAULT_AGENT_SOCKET
from cni.errors import DECODING_FAILURE, INVALID_NETWORK_CONFIG, CniError

DEFAULT_LOG_FILE = "/var/log/cilium-cni.log"

# How long ADD, CHECK and GC wait for an agent that is starting (its socket
# bound, not yet listening); Cilium's plugin waits for its agent too.
DEFAULT_AGENT_WAIT_SECONDS = 30
MAX_AGENT_WAIT_SECONDS = 600

# Deeper than any real netconf (prevResult.ips[0].address is 4 levels) and
# far below the interpreter's recursion limit, which copying, converting and
# encoding the document recurse against.
MAX_DEPTH = 64

_JSON_TYPES = {
    dict: "object",
    list: "array",
    str: "string",
    bool: "boolean",
    int: "number",
    float: "number",
    type(None): "null",
}


class NetConf:
    """A parsed netconf; treat as immutable."""

    __slots__ = (
        "cni_version",
        "name",
        "type",
        "chaining_mode",
        "agent_socket",
        "log_file",
        "log_max_bytes",
        "log_max_backups",
        "agent_wait_seconds",
        "prev_result",
        "args",
        "runtime_config",
        "valid_attachments",
        "raw",
    )

    def __init__(self, **fields):
        for key in self.__slots__:
            setattr(self, key, fields[key])

    def __repr__(self):
        return "NetConf(name=%r, type=%r, cni_version=%r, chaining_mode=%r)" % (
            self.name,
            self.type,
            self.cni_version,
            self.chaining_mode,
        )


def _invalid(msg):
    return CniError(INVALID_NETWORK_CONFIG, msg)


def _json_type(value):
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _get(conf, key, kind, default=None):
    """conf[key] if it has the JSON type `kind` ("string"/"object"), else fail."""
    if key not in conf:
        return default
    value = conf[key]
    if _json_type(value) != kind:
        raise _invalid(
            "invalid network configuration: '%s' must be %s %s, found %s"
            % (key, "an" if kind[0] in "aeiou" else "a", kind, _json_type(value))
        )
    return value


# sockaddr_un.sun_path is 108 bytes, with the terminating NUL.
_SOCKET_PATH_MAX = 107


def _path(conf, key, default):
    """A file name: text the kernel can take (no NUL; bytes that were not
    UTF-8 come as lone surrogates and are fine, other lone surrogates are not)."""
    value = _get(conf, key, "string", default)
    try:
        size = len(value.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:
        size = None
    if not value or "\x00" in value or size is None:
        raise _invalid("invalid network configuration: '%s' must be a file path, found %s"
                       % (key, json.dumps(value)))
    if key == "agent-socket" and size > _SOCKET_PATH_MAX:
        raise _invalid("invalid network configuration: 'agent-socket' '%s' is longer than "
                       "%d bytes, the limit of a Unix socket's path" % (value, _SOCKET_PATH_MAX))
    return value


def _log_rotation(conf):
    """(max bytes, backups) from log-max-size (MiB, 0 = never rotate) and log-max-backups."""
    size = _get(conf, "log-max-size", "number", 10)
    if not 0 <= size <= 1 << 20:  # also refuses NaN
        raise _invalid("invalid network configuration: 'log-max-size' must be a number of "
                       "MiB from 0 (never rotate) to 1048576, found %r" % size)
    backups = _get(conf, "log-max-backups", "number", 3)
    if not 1 <= backups <= 100 or backups != int(backups):
        raise _invalid("invalid network configuration: 'log-max-backups' must be a whole "
                       "number from 1 to 100, found %r" % backups)
    return int(size * (1 << 20)), int(backups)


def _attachments(conf):
    # CNI 1.1 GC passes them at the top level of the plugin's config; libcni
    # also sends the older name cni.dev/attachments (containernetworking/cni#1101).
    for key in ("cni.dev/valid-attachments", "cni.dev/attachments"):
        if key in conf:
            break
    else:
        return None
    entries = conf[key]
    if not isinstance(entries, list):
        raise _invalid(
            "invalid '%s': must be an array, found %s"
            % (key, _json_type(entries))
        )
    out = []
    for i, entry in enumerate(entries):
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("containerID"), str)
            and isinstance(entry.get("ifname"), str)
        ):
            raise _invalid(
                "invalid '%s'[%d]: must be an object with string "
                "containerID and ifname" % (key, i)
            )
        out.append({"containerID": entry["containerID"], "ifname": entry["ifname"]})
    return out


def _too_deep(value, limit=MAX_DEPTH):
    """True if `value` nests arrays and objects more than `limit` deep.

    A loop, not recursion: the point is to refuse what recursion cannot handle.
    """
    stack = [(value, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            return True
        children = value.values() if isinstance(value, dict) else value
        for child in children:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
    return False


def _too_deep_error():
    return CniError(
        DECODING_FAILURE,
        "failed to decode network configuration: nested deeper than %d levels" % MAX_DEPTH,
    )


def decode(data) -> dict:
    """stdin (str, or bytes that must be UTF-8) -> the netconf's JSON object."""
    if isinstance(data, (bytes, bytearray)):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CniError(
                DECODING_FAILURE,
                "failed to decode network configuration: not UTF-8 at byte %d" % exc.start,
            ) from None
    if not data or not data.strip():
        raise CniError(DECODING_FAILURE, "no network configuration on stdin")
    too_deep = False
    try:
        conf = json.loads(data)
    except RecursionError:
        too_deep = True
    except ValueError as exc:  # bad JSON, lone surrogates
        raise CniError(
            DECODING_FAILURE, "failed to decode network configuration: %s" % exc
        ) from None
    if too_deep:
        raise _too_deep_error()
    if not isinstance(conf, dict):
        raise CniError(
            DECODING_FAILURE,
            "network configuration must be a JSON object, found %s" % _json_type(conf),
        )
    return conf


def reply_settings(conf):
    """(cniVersion, log-file) of a decoded netconf, each None unless usable.

    For errors found before the netconf is accepted as a whole: the error is
    still answered in the version the runtime asked for and logged where
    the netconf says.
    """
    cni_version = conf.get("cniVersion")
    log_file = conf.get("log-file")
    return (cni_version if cni_version in version.SUPPORTED else None,
            log_file if isinstance(log_file, str) and log_file else None)


def _agent_wait(conf):
    seconds = _get(conf, "agent-wait-seconds", "number", DEFAULT_AGENT_WAIT_SECONDS)
    if not 0 <= seconds <= MAX_AGENT_WAIT_SECONDS:  # also refuses NaN
        raise _invalid("invalid network configuration: 'agent-wait-seconds' must be a number "
                       "from 0 (do not wait) to %d, found %r" % (MAX_AGENT_WAIT_SECONDS, seconds))
    return float(seconds)


def parse_netconf(data) -> NetConf:
    return from_document(decode(data))


def from_document(conf) -> NetConf:
    """Check every field this plugin reads of a decoded netconf."""
    if _too_deep(conf):  # here, not in decode: reply_settings can still read it
        raise _too_deep_error()
    if "cniVersion" not in conf:
        raise _invalid("network configuration has no cniVersion")
    cni_version = _get(conf, "cniVersion", "string")
    version.require_supported(cni_version)

    name = _get(conf, "name", "string")
    if not name:
        raise _invalid("network configuration has no name")
    plugin_type = _get(conf, "type", "string")
    if plugin_type is None:
        raise _invalid("network configuration has no type")
    runtime_config = _get(conf, "runtimeConfig", "object", {})
    log_max_bytes, log_max_backups = _log_rotation(conf)

    return NetConf(
        cni_version=cni_version,
        name=name,
        type=plugin_type,
        chaining_mode=_get(conf, "chaining-mode", "string"),
        agent_socket=_path(conf, "agent-socket", DEFAULT_AGENT_SOCKET),
        log_file=_path(conf, "log-file", DEFAULT_LOG_FILE),
        log_max_bytes=log_max_bytes,
        log_max_backups=log_max_backups,
        agent_wait_seconds=_agent_wait(conf),
        prev_result=_get(conf, "prevResult", "object"),
        args=_get(conf, "args", "object", {}),
        runtime_config=runtime_config,
        valid_attachments=_attachments(conf),
        raw=conf,
    )
