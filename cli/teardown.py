"""Take one stopped agent off the node, or the orphans: `cilium-cni cleanup`
(and `uninstall`, which runs it for the agent it installed).

An agent stopped with SIGTERM leaves its programs attached on purpose
(traffic keeps its policy and services across a restart); this is the way
off: its tc filters on every link, its socket hooks on the cgroup root, its
pins, its state (the endpoint store and the lock), its pending-delete
records and a stale socket. `plan()` finds them without changing anything
(what `--dry-run` prints), `carry_out()` removes them, holding the state
dir's lock so that the agent cannot start meanwhile. Both refuse while the
agent runs (its lock is held, or its socket answers).

Orphans (programs of ours attached where no pinned set owns them) are
`datapath.cleanup`'s; `orphan_lines()` words them for every command that
counts them.
"""

import contextlib
import errno
import fcntl
import os
from dataclasses import dataclass, field

from cni.attachment import pending_delete_dir

LOCK_NAME = "agent.lock"  # the agent's (agent/main.py): held while it runs
STATE_FILES = ("agent.db", "agent.db-wal", "agent.db-shm", "agent.db-journal", LOCK_NAME)
REMEDY = "cilium-cni cleanup --orphans"


class CleanupError(Exception):
    pass


class AgentRunning(CleanupError):
    """The agent to clean up is running: its lock is held or its socket answers."""


@dataclass
class Plan:
    """What one agent left on the node."""

    bpf_root: str
    attachments: list = field(default_factory=list)  # [footprint.Attached]
    pins: list = field(default_factory=list)
    state: list = field(default_factory=list)  # files of the state dir
    pending: list = field(default_factory=list)  # pending-delete records
    socket: str | None = None  # a socket file nobody answers on

    def as_dict(self):
        return {"bpfRoot": self.bpf_root, "detached": [a.as_dict() for a in self.attachments],
                "pins": self.pins, "state": self.state, "pendingDeletes": self.pending,
                "socket": self.socket}

    def empty(self):
        return not (self.attachments or self.pins or self.state or self.pending or self.socket)


def _lock(state_dir):
    """The agent's state dir lock, taken (an fd to close after), or None
    when there is no state dir; AgentRunning if the agent holds it."""
    if not state_dir:
        return None  # not known (an install record older than the state dir's entry)
    path = os.path.join(state_dir, LOCK_NAME)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise AgentRunning("the agent with state dir '%s' is running (pid %s): stop it first; "
                           "cleanup takes a stopped agent's datapath off" % (state_dir, pid)) \
            from None
    return fd


def answering(socket_path):
    """The pid of the agent answering on the socket, or None."""
    from cni.client import AgentClient
    try:
        status, info = AgentClient(socket_path, timeout=5).request("GET", "/v1/status")
    except Exception:
        return None
    return (info or {}).get("pid", "?") if status == 200 else None


def _refuse_if_answering(socket_path):
    pid = answering(socket_path)
    if pid is not None:
        raise AgentRunning("an agent answers on '%s' (pid %s): stop it first; cleanup takes a "
                           "stopped agent's datapath off" % (socket_path, pid))


def _files(directory, names=None):
    if not directory:
        return []
    try:
        found = sorted(os.listdir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [os.path.join(directory, n) for n in found if names is None or n in names]


def _plan(config, cgroups):
    from datapath import bpffs, cleanup
    if os.path.lexists(config.bpf_root) and not bpffs.is_bpffs(config.bpf_root):
        raise CleanupError("bpf root '%s' is not on a bpf filesystem: not an agent's; nothing "
                           "done" % config.bpf_root)
    socket = config.socket if os.path.exists(config.socket) else None
    return Plan(config.bpf_root, cleanup.root_attachments(config.bpf_root, cgroups),
                cleanup.pins(config.bpf_root), _files(config.state_dir, STATE_FILES),
                _files(pending_delete_dir(config.socket)), socket)


def cgroups_of(config):
    from datapath.footprint import cgroup_roots
    return cgroup_roots(config.cgroup_root)


def plan(config, cgroups=None):
    """What `carry_out` would remove for the agent of `config` (its socket
    hooks looked for on `cgroups`, by default its cgroup root and the
    usual ones); refuses (AgentRunning) while it runs."""
    fd = _lock(config.state_dir)
    try:
        _refuse_if_answering(config.socket)
        return _plan(config, cgroups_of(config) if cgroups is None else cgroups)
    finally:
        if fd is not None:
            os.close(fd)


def carry_out(config, cgroups=None):
    """Remove everything the stopped agent of `config` left; returns the Plan done."""
    from datapath import bpffs, cleanup
    fd = _lock(config.state_dir)
    try:
        _refuse_if_answering(config.socket)
        done = _plan(config, cgroups_of(config) if cgroups is None else cgroups)
        done.attachments = cleanup.detach(done.attachments)
        bpffs.remove_tree(config.bpf_root)
        # the state's lock last: it is held until the end
        for path in done.pending + ([done.socket] if done.socket else []) + done.state:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        _rmdir(pending_delete_dir(config.socket))
        if config.state_dir:
            _rmdir(config.state_dir)
        return done
    finally:
        if fd is not None:
            os.close(fd)


def _rmdir(path):
    try:
        os.rmdir(path)  # only if empty: what others put there stays
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.ENOTEMPTY, errno.EEXIST):
            raise


def plan_lines(done, dry_run):
    """What a Plan removed (or would), one line per kind of thing."""
    if done.empty():
        return ["nothing of the agent with bpf root %s is left on this node" % done.bpf_root]
    lines = ["%s %s (program %d) from %s" % ("would detach" if dry_run else "detached", a.name,
                                             a.prog_id, a.where()) for a in done.attachments]
    if done.pins:
        lines.append("%s %d pinned object(s) under %s" % (
            "would unpin" if dry_run else "unpinned", len(done.pins), done.bpf_root))
    for what, paths in (("state file", done.state), ("pending-delete record", done.pending)):
        if paths:
            lines.append("%s %d %s(s): %s" % ("would remove" if dry_run else "removed",
                                              len(paths), what, ", ".join(paths)))
    if done.socket:
        lines.append("%s the stale socket %s" % ("would remove" if dry_run else "removed",
                                                 done.socket))
    return lines


def orphan_lines(orphans, dry_run=None):
    """Orphans as lines: counted (dry_run None), to be detached, or detached."""
    if not orphans:
        return ["no orphaned programs of cilium-cni attached"]
    head = {None: "%d orphaned program(s) of cilium-cni attached (no agent's pinned set owns "
                  "them; remove with '%s')" % (len(orphans), REMEDY),
            True: "would detach %d orphaned program(s)" % len(orphans),
            False: "detached %d orphaned program(s)" % len(orphans)}[dry_run]
    return [head] + ["  %s (program %d) on %s" % (a.name, a.prog_id, a.where()) for a in orphans]
