"""An attachment: one pod interface, named `CONTAINERID:IFNAME` by both ends.

The plugin names it (the agent API's endpoint key, the file of a recorded
deletion) and the agent parses it; both use this module, so the two ends
cannot disagree on the form (Cilium's `NewCNIAttachmentID`). Here too: what
a valid container id and interface name are (libcni's rules), the agent
socket's default path, and the deletions the plugin records when the agent
does not answer (written here, read back here by the agent on start).

Hot path: imports only `os` and `cni.fastjson`.
"""

import os

from cni import fastjson as json

DEFAULT_SOCKET = "/var/run/cilium-cni/agent.sock"
PENDING_DELETES = "pending-deletes"
_RECORD_SUFFIX = ".json"

# Linux IFNAMSIZ (16) minus the terminating NUL.
IFNAME_MAX_BYTES = 15
CONTAINER_ID_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def attachment_id(container_id, ifname):
    """The attachment's name. Both parts must be valid (`container_id_problem`,
    `ifname_problem`): then it holds no '/', ':' past the separator, or space,
    and is safe in a URL path and as a file name."""
    return "%s:%s" % (container_id, ifname)


def container_id_problem(cid):
    """Why `cid` is not a container id, or None (libcni's ValidateContainerID,
    without importing re)."""
    if not cid:
        return "container id is empty"
    if not (cid[0].isascii() and cid[0].isalnum()) or not CONTAINER_ID_CHARS.issuperset(cid):
        return ("invalid container id '%s': must start with a letter or digit and "
                "contain only letters, digits, '_', '.' and '-'" % cid)
    return None


def ifname_problem(name):
    """Why `name` is not an interface name, or None (libcni's ValidateInterfaceName)."""
    if not name:
        return "interface name is empty"
    if len(name.encode("utf-8", "surrogateescape")) > IFNAME_MAX_BYTES:
        return "invalid interface name '%s': longer than %d bytes" % (name, IFNAME_MAX_BYTES)
    if name in (".", ".."):
        return "invalid interface name '%s'" % name
    for ch in name:
        if ch in "/:" or ch.isspace():
            return "invalid interface name %r: must not contain '/', ':' or whitespace" % name
    return None


def parse_attachment_id(text):
    """`CONTAINERID:IFNAME` -> (container id, ifname); ValueError naming the
    text for anything the plugin could not have sent."""
    cid, sep, ifname = text.partition(":")
    if not sep or container_id_problem(cid) or ifname_problem(ifname):
        raise ValueError("invalid endpoint key '%s': expected CONTAINERID:IFNAME" % text)
    return cid, ifname


def pending_delete_dir(socket_path):
    """Beside the agent's socket: the plugin can write there whenever it can
    reach the socket's directory, and the agent knows it from its config."""
    return os.path.join(os.path.dirname(socket_path) or ".", PENDING_DELETES)


def record_pending_delete(socket_path, container_id, ifname, record):
    """Leave a deletion for the agent to complete when it starts.

    Written atomically (temp file + rename) so that the agent never reads a
    half-written record; one file per container/ifname makes repeats idempotent.
    """
    directory = pending_delete_dir(socket_path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    final = os.path.join(directory, attachment_id(container_id, ifname) + _RECORD_SUFFIX)
    tmp = "%s.tmp.%d" % (final, os.getpid())
    with open(tmp, "w") as f:
        f.write(json.dumps(record))
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, final)
    return final


def pending_delete_names(directory):
    """The record files in `directory` (sorted; temporary and set-aside files
    excluded); none if it does not exist."""
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    return [n for n in names if n.endswith(_RECORD_SUFFIX)]


def recorded_attachment(name):
    """The attachment id a record's file name stands for (for logs, even when
    the record itself is unreadable)."""
    return name[:-len(_RECORD_SUFFIX)] if name.endswith(_RECORD_SUFFIX) else name


def read_pending_delete(path):
    """The attachment id a recorded deletion names.

    OSError if the file cannot be read; ValueError if it is not a record the
    plugin writes (not JSON, not an object, no valid containerID and ifname).
    """
    with open(path, "rb") as f:
        record = json.loads(f.read())
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    cid, ifname = record.get("containerID"), record.get("ifname")
    if not isinstance(cid, str) or not isinstance(ifname, str):
        raise ValueError("'containerID' and 'ifname' must be strings")
    key = attachment_id(cid, ifname)
    parse_attachment_id(key)
    return key
