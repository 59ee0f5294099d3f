"""Test helpers: pods as network namespaces, a libcni-like chain runner, an agent.

`Chain` runs a conflist's plugins the way libcni does: ADD in order, each
with the previous result as `prevResult` and the conflist's name and
cniVersion; the final result is cached and handed back as `prevResult` to
CHECK and to DEL (which runs in reverse order). Everything a helper creates
it also removes, by name or by pid.
"""

import json
import os
import signal
import subprocess
import threading
import time
import types
import uuid

from datapath import bpffs
from tests.apicontract import CheckedClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGIN_BIN = os.environ.get("CILIUM_CNI_BIN", os.path.join(REPO, ".venv", "bin", "cilium-cni"))
REFERENCE_PLUGINS = "/usr/lib/cni"
# Debian 12's containernetworking-plugins (1.1.1) speak up to CNI 1.0.0.
REFERENCE_MAX_VERSION = {t: "1.0.0" for t in ("bridge", "ptp", "portmap", "host-local")}


def sh(*cmd, check=True, **kw):
    return subprocess.run(cmd, check=check, capture_output=True, text=True, **kw)


def unique(prefix):
    return "%s%s" % (prefix, uuid.uuid4().hex[:6])


def in_parallel(calls, timeout=120):
    """Run each (fn, *args) of `calls` in a thread of its own, all at once;
    the exceptions they raised, for the caller to assert on."""
    errors = []

    def run(fn, *args):
        try:
            fn(*args)
        except Exception as exc:  # collected for the caller
            errors.append(exc)

    threads = [threading.Thread(target=run, args=call) for call in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    return errors


class Netns:
    def __init__(self, name=None):
        self.name = name or unique("ccni-")
        sh("ip", "netns", "add", self.name)
        sh("ip", "netns", "exec", self.name, "ip", "link", "set", "lo", "up")
        self.path = "/var/run/netns/%s" % self.name

    def run(self, *cmd, check=True, timeout=30):
        return sh("ip", "netns", "exec", self.name, *cmd, check=check, timeout=timeout)

    def remove(self):
        sh("ip", "netns", "del", self.name, check=False)


def run_plugin(binary, command, netconf, container_id="", netns="", ifname="eth0",
               cni_args="", cni_path=None, stdin=None, env_extra=None, prefix=()):
    """Run one plugin; `prefix` (e.g. nsenter --net=NODE) runs it in a node's netns."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": command,
           "CNI_CONTAINERID": container_id, "CNI_NETNS": netns, "CNI_IFNAME": ifname,
           "CNI_PATH": cni_path or REFERENCE_PLUGINS}
    if cni_args:
        env["CNI_ARGS"] = cni_args
    env.update(env_extra or {})
    data = stdin if stdin is not None else json.dumps(netconf)
    proc = subprocess.run([*prefix, binary], input=data, capture_output=True, text=True, env=env,
                          timeout=120)
    out = None
    if proc.stdout.strip():
        out = json.loads(proc.stdout)
    return proc.returncode, out, proc.stderr


class PluginFailed(AssertionError):
    def __init__(self, plugin, command, rc, out, err):
        super().__init__("%s %s failed rc=%d: %s %s" % (plugin, command, rc, out, err))
        self.plugin, self.rc, self.out = plugin, rc, out


class CheckUnsupported(AssertionError):
    """libcni refuses CHECK for a conflist below 0.4.0 without running a plugin."""


class Chain:
    """A conflist run like libcni, with result caching for CHECK and DEL.

    Like libcni it injects `runtimeConfig` (port mappings) into the plugins
    whose `capabilities` ask for it, skips CHECK when the conflist sets
    `disableCheck`, and refuses CHECK below 0.4.0. `outputs` keeps what each
    plugin printed on the last ADD of an attachment.
    """

    def __init__(self, conflist, cni_path, max_version=None, prefix=()):
        self.conflist = conflist
        self.prefix = tuple(prefix)  # the plugins run under it (a node's netns)
        self.cni_path = cni_path
        self.cache = {}
        self.args = {}
        self.runtime = {}
        self.outputs = {}
        # {plugin type: highest cniVersion it speaks}: Debian's reference
        # plugins stop at 1.0.0, so a 1.1.0 chain runs them at 1.0.0 and
        # relabels their result (1.0.0 and 1.1.0 results share one shape).
        self.max_version = max_version or {}

    def _binary(self, plugin_type):
        for d in self.cni_path.split(":"):
            path = os.path.join(d, plugin_type)
            if os.access(path, os.X_OK):
                return path
        raise FileNotFoundError(plugin_type)

    def _netconf(self, plugin, prev, args=None, runtime=None):
        version = self.conflist["cniVersion"]
        capped = self.max_version.get(plugin["type"])
        if capped and capped < version:
            version = capped
        conf = dict(plugin, name=self.conflist["name"], cniVersion=version)
        if args is not None:  # what a runtime injects per call ("args" convention)
            conf["args"] = args
        wanted = {k: v for k, v in (runtime or {}).items()
                  if (plugin.get("capabilities") or {}).get(k)}
        if wanted:
            conf["runtimeConfig"] = wanted
        if prev is not None:
            conf["prevResult"] = dict(prev, cniVersion=version)
        return conf

    def _run(self, plugin, command, prev, container_id, netns, ifname, cni_args, args=None):
        if cni_args:  # as kubelet's CRI runtimes and podman send it
            cni_args = "IgnoreUnknown=1;" + cni_args
        conf = self._netconf(plugin, prev, args, self.runtime.get((container_id, ifname)))
        return run_plugin(self._binary(plugin["type"]), command, conf,
                          container_id, netns, ifname, cni_args, self.cni_path,
                          prefix=self.prefix)

    def add(self, container_id, netns, ifname="eth0", cni_args="", labels=None,
            port_mappings=None):
        """ADD; `labels` ({"app": "web"}) go in the netconf args convention,
        `port_mappings` ([{"hostPort", "containerPort", "protocol"}]) in
        runtimeConfig for plugins with that capability."""
        args = None
        if labels:
            args = {"cni": {"labels": [{"key": k, "value": v} for k, v in labels.items()]}}
        key = (container_id, ifname)
        self.args[key] = args
        self.runtime[key] = {"portMappings": port_mappings} if port_mappings else {}
        prev = None
        outputs = self.outputs[key] = []
        for plugin in self.conflist["plugins"]:
            rc, out, err = self._run(plugin, "ADD", prev, container_id, netns, ifname, cni_args,
                                     args)
            if rc != 0:
                raise PluginFailed(plugin["type"], "ADD", rc, out, err)
            outputs.append(out)
            prev = dict(out, cniVersion=self.conflist["cniVersion"])
        self.cache[key] = prev
        return prev

    def check(self, container_id, netns, ifname="eth0", cni_args=""):
        """True when CHECK ran; False when the conflist disables it."""
        if self.conflist.get("disableCheck"):
            return False
        if self.conflist["cniVersion"] in ("0.1.0", "0.2.0", "0.3.0", "0.3.1"):
            raise CheckUnsupported("configuration version %s does not support the CHECK command"
                                   % self.conflist["cniVersion"])
        prev = self.cache[(container_id, ifname)]
        args = self.args.get((container_id, ifname))
        for plugin in self.conflist["plugins"]:
            rc, out, err = self._run(plugin, "CHECK", prev, container_id, netns, ifname, cni_args,
                                     args)
            if rc != 0:
                raise PluginFailed(plugin["type"], "CHECK", rc, out, err)
        return True

    def delete(self, container_id, netns, ifname="eth0", cni_args="", use_cache=True):
        prev = self.cache.get((container_id, ifname)) if use_cache else None
        for plugin in reversed(self.conflist["plugins"]):
            rc, out, err = self._run(plugin, "DEL", prev, container_id, netns, ifname, cni_args)
            if rc != 0:
                raise PluginFailed(plugin["type"], "DEL", rc, out, err)
        self.cache.pop((container_id, ifname), None)


def bridge_conflist(name, bridge, subnet, data_dir, socket, cni_version="1.0.0",
                    log_file=None, extra_plugins=(), subnet6=None):
    ipam = {"type": "host-local", "subnet": subnet, "dataDir": data_dir}
    if subnet6:
        ipam = {"type": "host-local", "dataDir": data_dir,
                "ranges": [[{"subnet": subnet}], [{"subnet": subnet6}]]}
    return {
        "cniVersion": cni_version,
        "name": name,
        "plugins": [
            {"type": "bridge", "bridge": bridge, "isGateway": True, "isDefaultGateway": True,
             "ipMasq": False, "ipam": ipam},
            *extra_plugins,
            {"type": "cilium-cni", "chaining-mode": "generic-veth", "agent-socket": socket,
             "log-file": log_file or os.path.join(os.path.dirname(socket), "plugin.log")},
        ],
    }


class Agent:
    """A real `cilium-cni agent` process on its own socket, state and bpf root."""

    def __init__(self, workdir, bpf_root=None, config=None, metrics_address="127.0.0.1:0",
                 socket_lb=False, prefix=(), env=None, args=()):
        self.workdir = workdir
        self.env = dict(env or {})  # added to the agent's environment
        self.prefix = tuple(prefix)  # e.g. ("nsenter", "--net=PATH"): an agent for that netns
        self.args = tuple(args)  # more flags, after the ones set here
        self.config = config
        # The socket hooks act on every process of the machine: only the
        # tests that are about them turn them on (and cleanup() detaches).
        self.socket_lb = socket_lb
        # port 0: a free port each, as tests run agents side by side
        self.metrics_address = metrics_address
        self.socket = os.path.join(workdir, "run", "agent.sock")
        self.state_dir = os.path.join(workdir, "state")
        self.bpf_root = bpf_root or "/sys/fs/bpf/%s" % unique("cilium-cni-test-")
        self.log_file = os.path.join(workdir, "agent.log")
        self.proc = None

    def start(self, timeout=60):
        self.start_process()
        return self.wait_ready(timeout)

    def start_process(self):
        os.makedirs(os.path.dirname(self.socket), exist_ok=True)
        self.proc = subprocess.Popen(
            [*self.prefix, PLUGIN_BIN, "agent", "--socket", self.socket, "--state-dir", self.state_dir,
             "--bpf-root", self.bpf_root, "--log-file", self.log_file, "--log-level", "debug",
             *(["--config", self.config] if self.config else []),
             "--socket-lb" if self.socket_lb else "--no-socket-lb",
             *(["--metrics-address", self.metrics_address]
               if self.metrics_address is not None else []),
             *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env=dict({k: v for k, v in os.environ.items() if not k.startswith("CNI_")},
                     **self.env))
        return self.proc

    def wait_ready(self, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("agent exited %d: %s\n%s" % (
                    self.proc.returncode, self.proc.stderr.read(), self.log()))
            try:
                status, _ = self.client().request("GET", "/v1/healthz", timeout=2)
                if status == 200:
                    return self
            except Exception:
                pass
            time.sleep(0.05)
        raise RuntimeError("agent did not become ready: %s" % self.log())

    def client(self):
        """Every response a test gets through it is checked against the API
        document (tests/apicontract.py)."""
        return CheckedClient(self.socket, timeout=60)

    def api(self, method, url, body=None):
        return self.client().request(method, url, body)

    def endpoints(self):
        return self.api("GET", "/v1/endpoints")[1]

    def log(self):
        try:
            with open(self.log_file) as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def stop(self, timeout=20):
        """SIGTERM our own process by pid; SIGKILL if it does not stop."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def cleanup(self):
        """Stop, then take everything the agent left off the node as
        `cilium-cni cleanup` does: filters, socket hooks (on the cgroup
        root its config names), pins, state, pending-delete records."""
        self.stop()
        from agent.config import ConfigError, load
        from cli import teardown
        try:
            cgroup_root = load(self.config).cgroup_root
        except ConfigError:
            cgroup_root = None  # a config the agent refused: it attached nothing
        teardown.carry_out(types.SimpleNamespace(socket=self.socket, state_dir=self.state_dir,
                                                 bpf_root=self.bpf_root, cgroup_root=cgroup_root))
        if os.path.isdir(self.bpf_root):
            bpffs.remove_tree(self.bpf_root)

ECHO_SERVER = r"""
import socket, sys
family = socket.AF_INET6 if ':' in sys.argv[2] else socket.AF_INET
kind = socket.SOCK_STREAM if sys.argv[1] == 'tcp' else socket.SOCK_DGRAM
s = socket.socket(family, kind)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[2], int(sys.argv[3])))
if kind == socket.SOCK_STREAM:
    s.listen(64)
print('ready', flush=True)
while True:
    if kind == socket.SOCK_STREAM:
        c, _ = s.accept()
        c.settimeout(5)
        try:
            c.sendall(b'pong:' + c.recv(100))
        except OSError:
            pass
        c.close()
    else:
        data, peer = s.recvfrom(100)
        s.sendto(b'pong:' + data, peer)
"""

ECHO_CLIENT = r"""
import socket, sys
family = socket.AF_INET6 if ':' in sys.argv[2] else socket.AF_INET
kind = socket.SOCK_STREAM if sys.argv[1] == 'tcp' else socket.SOCK_DGRAM
s = socket.socket(family, kind)
s.settimeout(float(sys.argv[4]))
try:
    if kind == socket.SOCK_STREAM:
        s.connect((sys.argv[2], int(sys.argv[3])))
        s.sendall(b'ping')
        ok = s.recv(100) == b'pong:ping'
    else:
        s.sendto(b'ping', (sys.argv[2], int(sys.argv[3])))
        ok = s.recvfrom(100)[0] == b'pong:ping'
except OSError:
    ok = False
print('ok' if ok else 'fail')
"""


class EchoServer:
    """A TCP or UDP echo server inside a namespace; stopped by pid."""

    def __init__(self, ns, proto, port, addr="0.0.0.0"):
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns.name, "python3", "-c", ECHO_SERVER, proto, addr, str(port)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.stop()
            raise RuntimeError("echo server did not start: %s" % self.proc.stderr.read())

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)


def prog_exists(prog_id):
    return sh("bpftool", "prog", "show", "id", str(prog_id), check=False).returncode == 0


def still_loaded(prog_ids, timeout=10.0):
    """The ids the kernel has not freed within `timeout` (it frees after an RCU grace period)."""
    deadline = time.monotonic() + timeout
    while True:
        left = [i for i in prog_ids if prog_exists(i)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def cli(agent, *args, check=True):
    """Run a `cilium-cni` command against `agent`; never a traceback, and
    (with `check`) exit code 0."""
    proc = subprocess.run([PLUGIN_BIN, *args, "--socket", agent.socket],
                          capture_output=True, text=True, timeout=120)
    assert "Traceback" not in proc.stderr
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def talks(ns, proto, addr, port, timeout=1.5):
    """True if an echo request from `ns` to addr:port gets its answer."""
    out = sh("ip", "netns", "exec", ns.name, "python3", "-c", ECHO_CLIENT, proto, addr, str(port),
             str(timeout), check=False, timeout=timeout + 10)
    return out.stdout.strip() == "ok"
