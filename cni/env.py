"""The `CNI_*` environment: which variables each command needs, and the
spec's checks on container id, interface name and CNI_ARGS.

Every check happens here, before any work, as in the Go skel. Does not read
stdin (that is `cni.netconf`) and does not open the netns.

The rules for container ids and interface names are `cni.attachment`'s,
shared with the agent. Hot path: imports only `os`, `cni.attachment` and
`cni.errors`.
"""

import os

from cni.attachment import container_id_problem, ifname_problem
from cni.errors import INVALID_ENVIRONMENT, CniError

COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "GC", "STATUS")

# Variables each command must have (non-empty), after CNI_COMMAND.
_REQUIRED = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    # The netns may already be gone when DEL runs; DEL must still succeed.
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
    "VERSION": (),
    "GC": ("CNI_PATH",),
    "STATUS": ("CNI_PATH",),
}


class CniArgs:
    """The parsed environment; fields a command does not use are None."""

    __slots__ = ("command", "container_id", "netns", "ifname", "path", "args")

    def __init__(self, command, container_id, netns, ifname, path, args):
        self.command = command
        self.container_id = container_id
        self.netns = netns
        self.ifname = ifname
        self.path = path
        self.args = args

    @property
    def k8s_namespace(self):
        return self.args.get("K8S_POD_NAMESPACE")

    @property
    def k8s_pod_name(self):
        return self.args.get("K8S_POD_NAME")

    @property
    def k8s_pod_uid(self):
        return self.args.get("K8S_POD_UID")

    def __repr__(self):
        return "CniArgs(command=%r, container_id=%r, netns=%r, ifname=%r)" % (
            self.command,
            self.container_id,
            self.netns,
            self.ifname,
        )


def _fail(msg):
    return CniError(INVALID_ENVIRONMENT, msg)


def validate_container_id(cid) -> None:
    problem = container_id_problem(cid)
    if problem:
        raise _fail(problem)


def validate_ifname(name) -> None:
    problem = ifname_problem(name)
    if problem:
        raise _fail(problem)


def parse_cni_args(text) -> dict:
    """CNI_ARGS `K=V;K=V` into a dict; all pairs are kept (IgnoreUnknown too)."""
    out = {}
    for pair in text.split(";"):
        if not pair:
            # A trailing ';' carries no pair; libcni rejects it, nothing is lost.
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise _fail("invalid CNI_ARGS pair '%s': expected KEY=VALUE" % pair)
        out[key] = value
    return out


def _shown(value):
    """`value` for a message: bytes that are not UTF-8 (os.environ keeps them
    as lone surrogates) as \\xNN escapes."""
    try:
        raw = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate no environment holds: as Python shows it
        return ascii(value)[1:-1]
    return raw.decode("utf-8", "backslashreplace")


def _utf8(var, value):
    # The agent API is JSON: text that is not UTF-8 cannot name anything there.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _fail("environment variable %s '%s' is not valid UTF-8"
                    % (var, _shown(value))) from None
    return value


def parse_env(environ) -> CniArgs:
    command = environ.get("CNI_COMMAND")
    if command is None:
        raise _fail("required environment variable CNI_COMMAND is missing")
    if command not in _REQUIRED:
        raise _fail(
            "%s: valid are %s" % ("unknown CNI_COMMAND '%s'" % _shown(command) if command
                                  else "CNI_COMMAND is empty", ", ".join(COMMANDS))
        )
    required = _REQUIRED[command]
    for var in required:
        if not environ.get(var):
            raise _fail("required environment variable %s is missing" % var)

    def used(var):
        # A variable the command does not use is ignored, not validated:
        # VERSION must work whatever else the runtime left in the env.
        if var in required or (command == "DEL" and var == "CNI_NETNS"):
            value = environ.get(var)
            return _utf8(var, value) if value else None
        return None

    container_id = used("CNI_CONTAINERID")
    if container_id is not None:
        validate_container_id(container_id)
    ifname = used("CNI_IFNAME")
    if ifname is not None:
        validate_ifname(ifname)
    path = used("CNI_PATH")
    args = {}
    if command in ("ADD", "DEL", "CHECK"):
        args = parse_cni_args(_utf8("CNI_ARGS", environ.get("CNI_ARGS") or ""))
    return CniArgs(
        command=command,
        container_id=container_id,
        netns=used("CNI_NETNS"),
        ifname=ifname,
        path=[d for d in path.split(os.pathsep) if d] if path else [],
        args=args,
    )
