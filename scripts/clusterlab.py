"""A cluster on one machine: nodes with an agent each and a real etcd cluster.

For the multi-node tests, the cluster demo and the benchmarks (import it as
`scripts.clusterlab`, run as root). One LAN namespace holds a bridge that
joins the nodes and the etcd members; each node is a network namespace with
its own agent (socket, state dir, bpffs root, cgroup root, metrics port), its
own prior plugin (bridge `cbr0` + host-local on the node's pod CIDR, chained
with cilium-cni) and routes to every other node's pod CIDR via that node's
LAN address (native routing, no tunnel):

    LAN netns (bridge lanbr 10.X.0.1/24, etcd members on 10.X.0.1:2379i)
      |-- veth --> node n0 (lan0 10.X.0.10, pods 10.X+1.0.0/24 on cbr0)
      |-- veth --> node n1 (lan0 10.X.0.11, pods 10.X+1.1.0/24 on cbr0)
      ...

Agents, etcd members and plugins enter a namespace with `nsenter --net`,
never `ip netns exec`, which remounts /sys and hides bpffs and the cgroup
hierarchy. Every name starts with the lab's prefix (`ccl` and random hex);
`Cluster.close()` removes what was made (processes by pid, namespaces, cgroup
dirs and their attachments, pins, etcd data), also after a failed start.

    with Cluster(nodes=3) as c:
        a = c.nodes[0].add_pod("a", labels={"app": "web"})
        c.etcd.put("k", "v"); c.etcd.get_prefix("k")
"""

import base64
import contextlib
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass

import yaml

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests import lab  # noqa: E402

CGROUP2 = "/sys/fs/cgroup/unified"
ETCD = "/usr/bin/etcd"
ETCDCTL = "/usr/bin/etcdctl"
CLIENT_PORT, PEER_PORT = 2379, 2479  # + the member's index; in the LAN netns, so no clash
METRICS_PORT = 9962  # + the node's index, on the node's loopback


def nsenter(path):
    return ("nsenter", "--net=%s" % path)


def _new_prefix():
    return "ccl%s" % uuid.uuid4().hex[:5]


class Lan:
    """The namespace joining the nodes: a bridge with 10.X.0.1/24."""

    def __init__(self, prefix, octet):
        self.octet = octet
        self.address = "10.%d.0.1" % octet
        self.ns = lab.Netns("%s-lan" % prefix)
        self.path = self.ns.path
        try:
            self.ip("link", "add", "lanbr", "type", "bridge")
            self.ip("addr", "add", "%s/24" % self.address, "dev", "lanbr")
            self.ip("link", "set", "lanbr", "up")
        except BaseException:
            self.remove()
            raise

    def ip(self, *args):
        return lab.sh("ip", "-n", self.ns.name, *args)

    def run(self, *cmd, check=True, timeout=30, env=None):
        return lab.sh(*nsenter(self.path), *cmd, check=check, timeout=timeout,
                      env=dict(os.environ, **(env or {})))

    def remove(self):
        self.ns.remove()


class EtcdCluster:
    """`members` etcd processes in the LAN netns, on the bridge address and
    the netns' loopback, with distinct client and peer ports and a data dir
    each under `workdir`. Members are indexed from 0."""

    def __init__(self, lan, workdir, members=3, token="ccl", extra_args=()):
        if members < 1:
            raise ValueError("an etcd cluster needs at least one member, not %d" % members)
        self.lan = lan
        self.workdir = workdir
        self.token = token
        self.extra_args = tuple(extra_args)
        self.names = ["m%d" % i for i in range(members)]
        self.procs = [None] * members
        self.started = [False] * members  # ever: a restart joins as "existing"
        os.makedirs(workdir, exist_ok=True)

    def client_url(self, i):
        return "http://%s:%d" % (self.lan.address, CLIENT_PORT + i)

    def peer_url(self, i):
        return "http://%s:%d" % (self.lan.address, PEER_PORT + i)

    def endpoints(self):
        """Every member's client URL (reachable from every node and the LAN netns)."""
        return [self.client_url(i) for i in range(len(self.names))]

    def data_dir(self, i):
        return os.path.join(self.workdir, self.names[i])

    def pids(self):
        return [p.pid for p in self.procs if p is not None]

    def start(self, i=None):
        """Start member `i` (when None: every member not running): `new` the
        first time, `existing` (same data dir) after that. Does not wait;
        see wait_healthy()."""
        if i is not None and i in self.running():
            raise RuntimeError("etcd member %d already runs (pid %d)" % (i, self.procs[i].pid))
        for j in [i] if i is not None else range(len(self.names)):
            if j not in self.running():
                self._start(j)

    def _start(self, i):
        cluster = ",".join("%s=%s" % (n, self.peer_url(j)) for j, n in enumerate(self.names))
        port = CLIENT_PORT + i
        cmd = [*nsenter(self.lan.path), ETCD, "--name", self.names[i], "--data-dir", self.data_dir(i),
               "--listen-client-urls", "http://%s:%d,http://127.0.0.1:%d" % (self.lan.address, port,
                                                                             port),
               "--advertise-client-urls", self.client_url(i),
               "--listen-peer-urls", self.peer_url(i),
               "--initial-advertise-peer-urls", self.peer_url(i),
               "--initial-cluster", cluster, "--initial-cluster-token", self.token,
               "--initial-cluster-state", "existing" if self.started[i] else "new",
               # the tests kill members: a new leader in ~0.5 s rather than ~1 s
               "--heartbeat-interval", "50", "--election-timeout", "500",
               *self.extra_args]
        log = open(os.path.join(self.workdir, "%s.log" % self.names[i]), "ab")
        try:
            # nsenter execs etcd: the pid is etcd's own
            self.procs[i] = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        finally:
            log.close()
        self.started[i] = True

    def running(self):
        return [i for i, p in enumerate(self.procs) if p is not None and p.poll() is None]

    def kill(self, i):
        """SIGKILL member `i` by its pid."""
        proc = self.procs[i]
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)

    def wait_healthy(self, timeout=30):
        """Until every running member answers healthy (a committed read)."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            for i, p in enumerate(self.procs):
                if p is not None and p.poll() is not None and p.returncode != -signal.SIGKILL:
                    raise RuntimeError("etcd member %d exited %d: %s" % (i, p.returncode,
                                                                         self.log(i)))
            urls = [self.client_url(i) for i in self.running()]
            last = self.ctl("endpoint", "health", endpoints=urls, check=False)
            if last.returncode == 0:
                return self
            time.sleep(0.1)
        raise RuntimeError("etcd not healthy after %ds: %s" % (timeout, last and last.stderr))

    def leader(self, timeout=10):
        """The index of the member that leads (as the running members see it)."""
        deadline = time.monotonic() + timeout
        while True:
            out = self.ctl("endpoint", "status", "-w", "json", check=False)
            if out.returncode == 0:
                status = json.loads(out.stdout)
                ids = {s["Endpoint"]: s["Status"]["header"]["member_id"] for s in status}
                leaders = {s["Status"]["leader"] for s in status}
                for i in self.running():
                    if len(leaders) == 1 and ids.get(self.client_url(i)) in leaders:
                        return i
            if time.monotonic() > deadline:
                raise RuntimeError("no etcd leader after %ds: %s" % (timeout, out.stderr))
            time.sleep(0.1)

    def log(self, i):
        try:
            with open(os.path.join(self.workdir, "%s.log" % self.names[i])) as f:
                return f.read()[-3000:]
        except OSError:
            return ""

    def ctl(self, *args, endpoints=None, check=True, timeout=5.0):
        """`etcdctl` (v3 API) in the LAN netns against `endpoints` (default:
        the running members); a CompletedProcess."""
        urls = endpoints if endpoints is not None else [self.client_url(i) for i in self.running()]
        return self.lan.run(ETCDCTL, "--endpoints=%s" % ",".join(urls), "--dial-timeout=1s",
                            "--command-timeout=%gs" % timeout, *args, check=check,
                            timeout=timeout + 10, env={"ETCDCTL_API": "3"})

    def _on(self, member):
        return None if member is None else [self.client_url(member)]

    def put(self, key, value, member=None, timeout=5.0):
        """Write through `member` (index) or any running one; CalledProcessError on failure."""
        self.ctl("put", key, value, endpoints=self._on(member), timeout=timeout)

    def get_prefix(self, prefix, member=None, timeout=5.0):
        """{key: value} (str) of every key under `prefix`, a linearizable read."""
        out = self.ctl("get", "--prefix", "-w", "json", prefix, endpoints=self._on(member),
                       timeout=timeout)
        kvs = json.loads(out.stdout).get("kvs") or []
        return {base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", "")).decode()
                for kv in kvs}

    def delete_prefix(self, prefix, member=None, timeout=5.0):
        self.ctl("del", "--prefix", prefix, endpoints=self._on(member), timeout=timeout)

    def stop(self):
        """SIGKILL every member by pid and remove the data. (On SIGTERM a
        member takes ~5 s handing its leadership over: wasted on data that
        goes anyway.)"""
        for i in range(len(self.procs)):
            self.kill(i)
        shutil.rmtree(self.workdir, ignore_errors=True)


@dataclass
class Pod:
    name: str
    netns: lab.Netns  # EchoServer(pod.netns, ...), lab.talks(pod.netns, ...)
    ip: str
    container_id: str


class Node:
    """A node: a netns on the LAN with its own agent, prior plugin and
    cgroup. Nodes are indexed from 0: address 10.X.0.(10+i), pods
    10.(X+1).i.0/24."""

    def __init__(self, prefix, index, lan, workdir, config=None, socket_lb=True, agent_args=()):
        self.index = index
        self.name = "%s-n%d" % (prefix, index)
        self.lan = lan
        self.address = "10.%d.0.%d" % (lan.octet, 10 + index)
        self.pod_cidr = "10.%d.%d.0/24" % (lan.octet + 1, index)
        self.workdir = workdir
        self.cgroup = os.path.join(CGROUP2, self.name)
        self.bpf_root = "/sys/fs/bpf/%s" % self.name
        self.metrics_address = "127.0.0.1:%d" % (METRICS_PORT + index)
        self.pods = {}
        self.procs = []  # what run_bg started, stopped by pid
        self.agent = None
        self.ns = lab.Netns(self.name)
        self.path = self.ns.path
        self.prefix = nsenter(self.path)
        try:
            self._build(workdir, config, socket_lb, agent_args)
        except BaseException:
            self.close()
            raise

    def _build(self, workdir, config, socket_lb, agent_args):
        index, lan = self.index, self.lan
        self.sysctl("net.ipv4.ip_forward=1")
        lab.sh("ip", "-n", lan.ns.name, "link", "add", "n%d" % index, "type", "veth", "peer",
               "name", "lan0", "netns", self.ns.name)
        lan.ip("link", "set", "n%d" % index, "master", "lanbr", "up")
        self.ip("addr", "add", "%s/24" % self.address, "dev", "lan0")
        self.ip("link", "set", "lan0", "up")
        os.mkdir(self.cgroup)
        os.makedirs(workdir, exist_ok=True)
        self.config_path = os.path.join(workdir, "agent.yaml")
        self.write_config(config or {})
        self.agent = lab.Agent(os.path.join(workdir, "agent"), self.bpf_root, self.config_path,
                               metrics_address=self.metrics_address, socket_lb=socket_lb,
                               prefix=self.prefix, args=agent_args)
        cni_bin = os.path.join(workdir, "cni-bin")
        os.makedirs(cni_bin, exist_ok=True)
        os.symlink(lab.PLUGIN_BIN, os.path.join(cni_bin, "cilium-cni"))
        self.conflist = lab.bridge_conflist("%s-net" % self.name, "cbr0", self.pod_cidr,
                                            os.path.join(workdir, "ipam"), self.agent.socket)
        self.chain = lab.Chain(self.conflist, "%s:%s" % (cni_bin, lab.REFERENCE_PLUGINS),
                               lab.REFERENCE_MAX_VERSION, prefix=self.prefix)

    def write_config(self, config):
        """The agent's config file: the node's cgroup root, then `config`
        (any keys, e.g. kvstore ones); read at the next (re)start."""
        with open(self.config_path, "w") as f:
            yaml.safe_dump(dict({"cgroup-root": self.cgroup}, **config), f)

    def ip(self, *args):
        return lab.sh("ip", "-n", self.ns.name, *args)

    def sysctl(self, setting):
        lab.sh(*self.prefix, "sysctl", "-qw", setting)

    def route_to(self, other):
        self.ip("route", "add", other.pod_cidr, "via", other.address, "dev", "lan0")

    # the agent

    def start_agent(self, timeout=60):
        self.agent.start(timeout)
        return self

    def restart_agent(self, timeout=60):
        """SIGTERM, then start again on the same socket, state and pins."""
        self.agent.stop()
        return self.start_agent(timeout)

    def kill_agent(self):
        """SIGKILL the agent by its pid."""
        proc = self.agent.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)

    def cli(self, *args, check=True):
        """A `cilium-cni` command against this node's agent."""
        return lab.cli(self.agent, *args, check=check)

    # pods

    def add_pod(self, name, labels=None):
        """A pod netns with the node's chain run for it (in the node's netns); a Pod."""
        if name in self.pods:
            raise ValueError("node %s already has a pod named %r" % (self.name, name))
        ns = lab.Netns("%s-%s" % (self.name, name))
        cid = lab.unique("ccl")
        try:
            result = self.chain.add(cid, ns.path, labels=labels)
        except BaseException:
            with contextlib.suppress(Exception):
                self.chain.delete(cid, ns.path)
            ns.remove()
            raise
        pod = self.pods[name] = Pod(name, ns, result["ips"][0]["address"].split("/")[0], cid)
        return pod

    def delete_pod(self, name):
        pod = self.pods.pop(name)
        try:
            self.chain.delete(pod.container_id, pod.netns.path)
        finally:
            pod.netns.remove()

    # host processes of the node: in its netns and its cgroup

    def _in_node(self, cmd):
        # the shell moves itself into the cgroup, then execs the command in the netns
        return ["sh", "-c", 'echo $$ > "$0" && exec "$@"', os.path.join(self.cgroup, "cgroup.procs"),
                *self.prefix, *cmd]

    def run(self, *cmd, check=True, timeout=30):
        """Run a host process of this node to its end; a CompletedProcess."""
        return lab.sh(*self._in_node(cmd), check=check, timeout=timeout)

    def run_bg(self, *cmd, **popen):
        """Start a host process of this node; it is stopped (by pid) at close()."""
        proc = subprocess.Popen(self._in_node(cmd), **popen)
        self.procs.append(proc)
        return proc

    def close(self):
        """Remove the node: processes, agent (its hooks, pins, state), pods,
        the cgroup, the netns. Every step is tried; the first error is raised."""
        errors = []

        def attempt(fn, *args):
            try:
                fn(*args)
            except Exception as exc:  # go on with the rest; raised at the end
                errors.append(exc)

        for proc in self.procs:
            attempt(_stop_pid, proc)
        if self.agent is not None:
            attempt(self.agent.cleanup)
        for pod in self.pods.values():
            attempt(pod.netns.remove)
        self.pods.clear()
        attempt(_rmdir_cgroup, self.cgroup)
        attempt(self.ns.remove)
        if errors:
            raise errors[0]


def _stop_pid(proc):
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


def _rmdir_cgroup(path, timeout=5.0):
    """rmdir a cgroup once its processes have left (an exited one lingers
    briefly); the kernel detaches the programs attached to it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class Cluster:
    """`nodes` nodes and (with `etcd`) a 3-member etcd cluster on one LAN.

    `config` is written to every agent's config file; `node_config(node,
    cluster)` may add keys per node (node-name, kvstore-endpoints: the etcd
    cluster is up before the agents start). Agents start in parallel unless
    `start_agents` is false. A context manager: leaving it removes
    everything, as does a failed start."""

    def __init__(self, nodes=3, etcd=True, etcd_members=3, config=None, node_config=None,
                 socket_lb=True, agent_args=(), start_agents=True):
        if nodes < 1:
            raise ValueError("a cluster needs at least one node, not %d" % nodes)
        self.prefix = _new_prefix()
        self.workdir = tempfile.mkdtemp(prefix="%s-" % self.prefix)
        self.lan = None
        self.etcd = None
        self.nodes = []
        self.timings = {}
        started = time.monotonic()
        try:
            self.lan = Lan(self.prefix, random.randrange(100, 250, 2))
            if etcd:
                self.etcd = EtcdCluster(self.lan, os.path.join(self.workdir, "etcd"), etcd_members,
                                        token=self.prefix)
                self.etcd.start()
            for i in range(nodes):
                self.nodes.append(Node(self.prefix, i, self.lan,
                                       os.path.join(self.workdir, "n%d" % i), socket_lb=socket_lb,
                                       agent_args=agent_args))
            for node in self.nodes:
                for other in self.nodes:
                    if other is not node:
                        node.route_to(other)
                node.write_config(dict(config or {}, **(node_config(node, self)
                                                       if node_config else {})))
            if self.etcd:
                self.etcd.wait_healthy()
            if start_agents:
                errors = lab.in_parallel([(n.start_agent,) for n in self.nodes])
                if errors:
                    raise errors[0]
        except BaseException:
            self.close()
            raise
        self.timings["up"] = time.monotonic() - started

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Remove everything; every step is tried, the first error raised."""
        started = time.monotonic()
        errors = []
        for node in self.nodes:
            try:
                node.close()
            except Exception as exc:  # the other nodes still go
                errors.append(exc)
        self.nodes = []
        if self.etcd:
            try:
                self.etcd.stop()
            except Exception as exc:
                errors.append(exc)
        if self.lan:
            self.lan.remove()
        shutil.rmtree(self.workdir, ignore_errors=True)
        self.timings["down"] = time.monotonic() - started
        if errors:
            raise errors[0]


def kvstore_config(**extra):
    """A `node_config` for Cluster: every agent joins the lab's etcd under
    the lab's own key prefix, named after its node, with its pod CIDR and
    LAN address; `extra` keys (e.g. kvstore-lease-ttl) are added."""
    def config(node, cluster):
        return dict({"kvstore": "etcd", "kvstore-endpoints": cluster.etcd.endpoints(),
                     "kvstore-prefix": cluster.prefix, "node-name": node.name,
                     "node-pod-cidrs": [node.pod_cidr],
                     "node-addresses": ["%s/24" % node.address]}, **extra)
    return config


def leftovers(prefix):
    """What of a lab with `prefix` is still on the machine: netns names,
    cgroup dirs, bpf roots, processes whose command line names it."""
    found = [n for n in lab.sh("ip", "netns", "list").stdout.split() if n.startswith(prefix)]
    found += [p for p in (os.path.join(d, n) for d in (CGROUP2, "/sys/fs/bpf")
                          for n in os.listdir(d)) if os.path.basename(p).startswith(prefix)]
    pgrep = lab.sh("pgrep", "-af", prefix, check=False).stdout.splitlines()
    found += ["process %s" % line for line in pgrep if "pgrep" not in line]
    return found
