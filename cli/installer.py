"""`cilium-cni install` and `uninstall`: put cilium-cni on a node, take it off.

Install copies the executable (and, for the one-folder build, its
`cilium-cni.d` contents) into the CNI bin dir, writes the agent's config if
there is none, installs the systemd unit and enables it, and chains the
plugin into the node's conflist (`install_conf`). Everything it creates
that did not exist before, and how it started the agent, is recorded in
`<config dir>/install.json`; uninstall reads that record and undoes exactly
that: stops the agent it started, takes the agent's datapath and state off
the node as `cilium-cni cleanup` does (`cli.teardown`), restores the
conflist backup, and removes the files and directories it made, leaving
those it found.

systemd: with systemd running (/run/systemd/system exists), the unit is
enabled and started. Without it (a container, or this test machine, whose
PID 1 is not systemd) `systemctl enable` still works offline (it only makes
the symlink), but nothing can be started: the unit is enabled for the next
boot under systemd and the output says so; `start_agent` then starts the
agent as a plain background process instead (uninstall stops it by pid).

Every path derives from `root` (default /) unless given on its own, so tests
install into a temporary tree. Does not: restart runtimes (they re-read the
conflist per pod) or remove endpoints' state in pods (the prior plugin owns
pod networking).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import types
from dataclasses import dataclass

from cli import install_conf

UNIT_NAME = "cilium-cni-agent.service"
CONTENTS_DIR = "cilium-cni.d"
MANIFEST_NAME = "install.json"
DEFAULT_PLUGIN_LOG = "/var/log/cilium-cni.log"
CONF_DIR = os.path.join(getattr(sys, "_MEIPASS", os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "conf")


class InstallError(Exception):
    pass


@dataclass(frozen=True)
class Layout:
    root: str
    bin_dir: str
    conf_dir: str
    config_dir: str
    unit_dir: str

    @classmethod
    def under(cls, root="/", bin_dir=None, conf_dir=None, config_dir=None, unit_dir=None):
        def at(path, default):
            return os.path.abspath(path) if path else os.path.join(root, default)
        root = os.path.abspath(root)
        return cls(root, at(bin_dir, "opt/cni/bin"), at(conf_dir, "etc/cni/net.d"),
                   at(config_dir, "etc/cilium-cni"), at(unit_dir, "etc/systemd/system"))

    @property
    def binary(self):
        return os.path.join(self.bin_dir, "cilium-cni")

    @property
    def contents(self):
        return os.path.join(self.bin_dir, CONTENTS_DIR)

    @property
    def agent_config(self):
        return os.path.join(self.config_dir, "agent.yaml")

    @property
    def unit(self):
        return os.path.join(self.unit_dir, UNIT_NAME)

    @property
    def manifest(self):
        return os.path.join(self.config_dir, MANIFEST_NAME)


def running_binary():
    """The executable to install by default: this one (built or launcher).

    In the one-folder build this process is the PyInstaller executable
    inside `cilium-cni.d`; what the runtime calls, and what is installed, is
    the launcher beside that folder (scripts/launcher.c), which handed the
    command line over to this one."""
    if getattr(sys, "frozen", False):
        here = os.path.dirname(os.path.abspath(sys.executable))
        if os.path.basename(here) == CONTENTS_DIR:
            outer = os.path.join(os.path.dirname(here), "cilium-cni")
            return outer if os.path.isfile(outer) and os.access(outer, os.X_OK) else None
        return sys.executable
    path = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return path if os.path.isfile(path) and os.access(path, os.X_OK) else None


def systemd_state():
    """'running' (booted with systemd), 'offline' (systemctl only) or 'absent'."""
    if os.path.isdir("/run/systemd/system"):
        return "running"
    return "offline" if shutil.which("systemctl") else "absent"


def _pid1():
    try:
        with open("/proc/1/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def _systemctl(*args):
    proc = subprocess.run(["systemctl", *args], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise InstallError("systemctl %s failed: %s" % (" ".join(args), proc.stderr.strip()))


class _Recorder:
    """Creates files and directories, remembering those that were not there."""

    def __init__(self, created):
        self.created = created

    def note(self, path):
        if path not in self.created:
            self.created.append(path)

    def makedirs(self, path, mode=0o755):
        missing = []
        while path and not os.path.exists(path):
            missing.append(path)
            path = os.path.dirname(path)
        for p in reversed(missing):
            os.mkdir(p, mode)
            self.note(p)

    def write(self, path, data, mode=0o644):
        self.makedirs(os.path.dirname(path))
        existed = os.path.lexists(path)
        tmp = "%s.tmp.%d" % (path, os.getpid())
        with open(tmp, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
        if not existed:
            self.note(path)


# The record keeps paths relative to the install root, so that a DaemonSet's
# init container (root /host) and the node (root /) read the same record.
def _convert(manifest, fn):
    out = dict(manifest, created=[fn(p) for p in manifest["created"]])
    if out.get("conflist"):
        out["conflist"] = {k: fn(v) if v else v for k, v in out["conflist"].items()}
    return out


def _read_manifest(layout):
    try:
        with open(layout.manifest) as f:
            return _convert(json.load(f), lambda p: os.path.join(layout.root, p))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InstallError("cannot read the install record '%s': %s" % (layout.manifest, exc)) \
            from None


def _write_manifest(layout, manifest, rec):
    def rel(path):
        inside = os.path.commonpath([path, layout.root]) == layout.root
        return os.path.relpath(path, layout.root) if inside else path
    rec.makedirs(os.path.dirname(layout.manifest))
    rec.note(layout.manifest)
    text = json.dumps(_convert(manifest, rel), indent=2) + "\n"
    rec.write(layout.manifest, text.encode())


def _copy_binary(layout, binary, rec):
    rec.makedirs(layout.bin_dir)
    with open(binary, "rb") as f:
        rec.write(layout.binary, f.read(), 0o755)
    contents = os.path.join(os.path.dirname(os.path.abspath(binary)), CONTENTS_DIR)
    if os.path.isdir(contents) and os.path.abspath(contents) != layout.contents:
        staging = layout.contents + ".new"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(contents, staging, symlinks=True)
        if os.path.isdir(layout.contents):
            old = layout.contents + ".old"
            os.replace(layout.contents, old)
            os.replace(staging, layout.contents)
            shutil.rmtree(old)
        else:
            os.replace(staging, layout.contents)
        rec.note(layout.contents)


def _render_unit(layout):
    with open(os.path.join(CONF_DIR, UNIT_NAME)) as f:
        text = f.read()
    return (text.replace("/opt/cni/bin/cilium-cni agent", layout.binary + " agent")
            .replace("/etc/cilium-cni/agent.yaml", layout.agent_config))


def _runtime_paths(config, plugin_log):
    """What the agent and the plugin create at run time, from the agent's config."""
    return [p for p in (config.state_dir, os.path.dirname(config.socket), config.log_file,
                        plugin_log, config.bpf_root) if p]


def _start_agent(layout, config, timeout=60.0):
    from cni.client import AgentClient
    proc = subprocess.Popen([layout.binary, "agent", "--config", layout.agent_config],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise InstallError("the agent exited with status %d at start; see %s"
                               % (proc.returncode, config.log_file or "its stderr"))
        try:
            if AgentClient(config.socket, timeout=2).request("GET", "/v1/healthz")[0] == 200:
                return proc.pid
        except Exception:
            pass
        time.sleep(0.1)
    raise InstallError("the agent (pid %d) did not answer on %s within %.0f s"
                       % (proc.pid, config.socket, timeout))


def install(layout, binary, chaining_mode, network=None, agent_config_src=None,
            with_agent=True, start_agent=False, plugin_log=DEFAULT_PLUGIN_LOG):
    """Install; returns the lines to print. Idempotent: a second run updates in place."""
    from agent import config as agent_config
    if not binary or not os.path.isfile(binary):
        raise InstallError("no binary to install%s: build one with scripts/build or give --binary"
                           % (" at '%s'" % binary if binary else ""))
    src = agent_config_src or os.path.join(CONF_DIR, "agent.yaml")
    keep = with_agent and os.path.exists(layout.agent_config)
    try:
        config = agent_config.load(layout.agent_config if keep else src)
    except agent_config.ConfigError as exc:
        raise InstallError("invalid agent config: %s" % exc) from None
    entry = {"type": "cilium-cni", "chaining-mode": chaining_mode, "agent-socket": config.socket,
             "log-file": plugin_log}
    target = install_conf.check(layout.conf_dir, entry, network)[0]  # before any change
    manifest = _read_manifest(layout) or {"created": [], "runtime": [], "agent": None}
    manifest["bpf-root"] = config.bpf_root
    # Where socket load-balancing may have attached programs (cgroup v2 root).
    manifest["cgroups"] = list(dict.fromkeys(
        [p for p in (getattr(config, "cgroup_root", None), "/sys/fs/cgroup/unified",
                     "/sys/fs/cgroup") if p]))
    manifest["socket"] = config.socket
    manifest["state-dir"] = config.state_dir
    rec = _Recorder(manifest["created"])
    try:
        return _install_steps(layout, binary, manifest, rec, config, src, keep, entry, target,
                              network, with_agent, start_agent, plugin_log)
    finally:  # also after a failure part-way: uninstall then undoes what was done
        _write_manifest(layout, manifest, rec)


def _install_steps(layout, binary, manifest, rec, config, src, keep, entry, target, network,
                   with_agent, start_agent, plugin_log):
    lines = []
    _copy_binary(layout, binary, rec)
    lines.append("installed %s" % layout.binary)
    if keep:
        lines.append("kept the existing agent config %s" % layout.agent_config)
    elif with_agent:
        with open(src, "rb") as f:
            rec.write(layout.agent_config, f.read())
        lines.append("wrote the agent config %s" % layout.agent_config)
    for path in _runtime_paths(config, plugin_log):
        if not os.path.lexists(path) and path not in manifest["runtime"]:
            manifest["runtime"].append(path)

    path, backup, changed = install_conf.install(layout.conf_dir, entry, network)
    if "conflist" not in manifest:
        backup = backup or (target + install_conf.BACKUP_SUFFIX
                            if os.path.exists(target + install_conf.BACKUP_SUFFIX) else None)
        manifest["conflist"] = {"path": path, "original": target, "backup": backup}
    lines.append("%s %s (%s)" % ("chained cilium-cni into" if changed else "already chained:",
                                 path, entry["chaining-mode"]))

    if with_agent:
        rec.write(layout.unit, _render_unit(layout).encode())
        lines.append("installed the unit %s" % layout.unit)
        lines += _enable(layout, manifest, config, start_agent)
    return lines


def _enable(layout, manifest, config, start_agent):
    state = systemd_state()
    on_host = layout.root == "/"
    if state == "running" and on_host:
        _systemctl("daemon-reload")
        _systemctl("enable", "--now", UNIT_NAME)
        manifest["agent"] = "systemd"
        return ["enabled and started %s" % UNIT_NAME]
    lines = []
    offline_root = None if on_host else layout.root
    if state != "absent" and layout.unit_dir == os.path.join(layout.root, "etc/systemd/system"):
        wants = os.path.join(layout.unit_dir, "multi-user.target.wants")
        if not os.path.exists(wants):
            manifest["created"].append(wants)
        _systemctl(*(["--root", offline_root] if offline_root else []), "enable", UNIT_NAME)
        manifest["enabled"] = offline_root or "/"
        lines.append("enabled %s offline (systemd is not running here: PID 1 is '%s'); it "
                     "starts at the next boot under systemd" % (UNIT_NAME, _pid1()))
    else:
        lines.append("%s installed, not enabled (%s)" % (
            UNIT_NAME, "no systemctl on this node" if state == "absent" else
            "unit dir outside the install root"))
    if start_agent and manifest.get("agent") is None:
        pid = _start_agent(layout, config)
        manifest["agent"] = {"pid": pid}
        lines.append("started the agent without systemd (pid %d); uninstall stops it" % pid)
    elif manifest.get("agent") is None:
        lines.append("the agent is not running: start it with '%s agent --config %s' "
                     "(or install with --start)" % (layout.binary, layout.agent_config))
    return lines


def _stop_agent(layout, manifest):
    lines = []
    agent = manifest.get("agent")
    if agent == "systemd":
        _systemctl("disable", "--now", UNIT_NAME)
        lines.append("stopped and disabled %s" % UNIT_NAME)
    elif isinstance(agent, dict) and _is_our_agent(agent["pid"], layout.binary):
        os.kill(agent["pid"], signal.SIGTERM)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _is_our_agent(agent["pid"], layout.binary):
            time.sleep(0.1)
        if _is_our_agent(agent["pid"], layout.binary):
            raise InstallError("the agent (pid %d) did not stop within 30 s" % agent["pid"])
        lines.append("stopped the agent (pid %d)" % agent["pid"])
    if manifest.get("enabled"):
        root = manifest["enabled"]
        _systemctl(*(["--root", root] if root != "/" else []), "disable", UNIT_NAME)
        lines.append("disabled %s" % UNIT_NAME)
    manifest["agent"] = manifest["enabled"] = None
    return lines


def _is_our_agent(pid, binary):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    try:
        with open("/proc/%d/stat" % pid) as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False  # exited; its parent has not reaped it yet
    except (OSError, IndexError):
        return False
    # argv[0] is the binary, or an interpreter running it (the source launcher).
    want = os.fsencode(binary)
    return any(a == want and argv[i + 1:i + 2] == [b"agent"] for i, a in enumerate(argv[:3]))


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def uninstall(layout):
    """Undo what install recorded; returns the lines to print."""
    from cli import teardown
    from datapath import bpffs
    manifest = _read_manifest(layout)
    if manifest is None:
        raise InstallError("nothing to uninstall: no install record at %s" % layout.manifest)
    lines = _stop_agent(layout, manifest)
    pid = teardown.answering(manifest["socket"])
    if pid is not None:
        raise InstallError("an agent not started by install still answers on %s (pid %s): "
                           "stop it, then run uninstall again" % (manifest["socket"], pid))
    root = manifest.get("bpf-root")
    if root in manifest["runtime"] and bpffs.is_bpffs(root):  # a root found there is not ours
        agent = types.SimpleNamespace(bpf_root=root, socket=manifest["socket"],
                                      state_dir=manifest.get("state-dir"))
        try:
            done = teardown.carry_out(agent, manifest.get("cgroups", ()))
        except teardown.CleanupError as exc:
            raise InstallError(str(exc)) from None
        filters = [a for a in done.attachments if a.kind == "tc"]
        lines.append("detached %d tc filter(s)%s and %d cgroup program(s), unpinned %s" % (
            len(filters), "" if not filters else " (%s)" % ", ".join(
                "%s %s" % (a.target, a.hook) for a in filters),
            len(done.attachments) - len(filters), root))
    record = manifest.get("conflist")
    if record:
        lines.append(install_conf.restore(record["path"], record["original"], record["backup"]))
    if os.path.exists(layout.unit):
        os.unlink(layout.unit)
        lines.append("removed %s" % layout.unit)
        if systemd_state() == "running" and layout.root == "/":
            _systemctl("daemon-reload")
    for path in (layout.binary, layout.contents):
        if os.path.lexists(path):
            _remove(path)
    lines.append("removed %s" % layout.binary)
    for path in manifest["runtime"]:
        if os.path.lexists(path) and not (root and path == root):
            _remove(path)
            lines.append("removed %s" % path)
    os.unlink(layout.manifest)
    for path in reversed(manifest["created"]):
        if os.path.isdir(path) and not os.path.islink(path):
            try:
                os.rmdir(path)  # only if empty: what others put there stays
            except OSError:
                lines.append("kept %s (not empty)" % path)
        elif os.path.lexists(path):
            os.unlink(path)
    return lines
