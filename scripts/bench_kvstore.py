"""Benchmark: a cluster through etcd (issue 12): ADD latency, propagation, scale.

Runs its own etcd 3.4 member on loopback (ports 24379/24380, data in a
temporary directory) and real agents on this host with `kvstore: etcd`
(nodes kb-n1, kb-n2, kb-n3), plus one standalone sqlite agent; each node's
pods sit on a bridge of its own (kbbr0, kbbr1, kbbr2 for sqlite) and reach
each other through the host. Prints, in one run:

1. ADD latency of the cilium-cni plugin (after Debian's `bridge`), etcd
   agent vs sqlite agent, interleaved pod by pod: a known identity (same
   labels every time) and a new identity per pod (unique labels: one
   compare-and-swap transaction in etcd).
2. Propagation: a UDP echo server on node 2 behind a policy allowing
   ingress only from app=client; for each new app=client pod on node 1,
   the time from its ADD returning until node 2's ipcache map holds its
   address (read from the pinned map) and until its packets get answers
   (a probe inside the pod, started before the ADD, sending every 5 ms).
3. Scale by simulation: publisher processes (no datapath) write
   `ip/v1/<addr>/32`, identity and use keys with the real layout values
   under leases, as many nodes would; the three agents watch and apply
   them to their ipcache maps. Bytes per endpoint in etcd, events per
   second applied, time until all agents converge, agent CPU and RSS per
   10,000 remote endpoints; then the leases are revoked and the time until
   every agent dropped them.

Needs root; removes everything it made (by name and pid). Figures are in
docs/benchmarks.md ("kvstore").

    .venv/bin/python scripts/bench_kvstore.py [--pods N] [--propagation-pods N]
        [--scale 5000,50000] [--publishers N]
"""

import argparse
import ipaddress
import json
import multiprocessing
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scripts.benchlib import bridge_net, cilium_netconf, p99, parse_args, print_machine, target_line  # noqa: E402
from scripts.benchlib import timed_plugin as timed  # noqa: E402
from tests import lab  # noqa: E402

ETCD_CLIENT, ETCD_PEER = 24379, 24380
ETCD_URL = "http://127.0.0.1:%d" % ETCD_CLIENT
PREFIX = "kb"
SERVER_PORT = 8080
SIM_BASE = int(ipaddress.ip_address("10.128.0.0"))  # simulated pods: never traffic targets
SIM_IDENTITY_TOP = 60000   # simulated identities count down from here; agents allocate from 256 up
ENDPOINTS_PER_IDENTITY = 20
SETTLE = 0.05             # s after each timed call, for its aftermath
BATCH = 128                # etcd's max-txn-ops
IPCACHE_CAPACITY = 65536   # datapath/maps/ipcache.py IpcacheMap.SHAPES
CLK_TCK = os.sysconf("SC_CLK_TCK")

POLICY = """apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: kb-web-from-client}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
"""

# Inside a new pod, started (and ready) before its ADD: waits for "go", then sends a
# datagram every 5 ms until one is answered; prints CLOCK_MONOTONIC (shared
# by every netns) of the answer, so the parent subtracts its own ADD time.
PROBE = r"""
import select, socket, sys, time
addr, port, limit = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
print('ready', flush=True)
sys.stdin.readline()
start = time.monotonic()
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sent = 0
while time.monotonic() - start < limit:
    try:
        s.sendto(b'ping', (addr, port))
        sent += 1
    except OSError:
        pass
    if select.select([s], [], [], 0.005)[0]:
        s.recvfrom(100)
        print('ok %.6f %d' % (time.monotonic(), sent), flush=True)
        break
else:
    print('timeout %d' % sent, flush=True)
"""


class Lab:
    """etcd, agents, bridges, namespaces: everything this run makes."""

    def __init__(self):
        self.work = tempfile.mkdtemp(prefix="kb-bench-")
        self.etcd = None
        self.agents = []
        self.namespaces = []
        self.bridges = []

    def start_etcd(self):
        data = os.path.join(self.work, "etcd")
        log = open(os.path.join(self.work, "etcd.log"), "w")
        peer = "http://127.0.0.1:%d" % ETCD_PEER
        self.etcd = subprocess.Popen(
            ["/usr/bin/etcd", "--name", "kb", "--data-dir", data, "--listen-client-urls", ETCD_URL,
             "--advertise-client-urls", ETCD_URL, "--listen-peer-urls", peer,
             "--initial-advertise-peer-urls", peer, "--initial-cluster", "kb=" + peer],
            stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.etcd.poll() is not None:
                raise RuntimeError("etcd exited: see %s/etcd.log" % self.work)
            if etcdctl("endpoint", "health", check=False).returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError("etcd did not become healthy")

    def agent(self, name, node=None):
        """An agent; `node` set: one node of the etcd cluster."""
        d = os.path.join(self.work, name)
        os.makedirs(d)
        conf = None
        if node:
            conf = os.path.join(d, "agent.yaml")
            with open(conf, "w") as f:
                json.dump({"kvstore": "etcd", "kvstore-endpoints": [ETCD_URL],
                           "kvstore-prefix": PREFIX, "node-name": node}, f)
        ag = lab.Agent(d, bpf_root="/sys/fs/bpf/kb-%s" % name, config=conf)
        ag.name = name
        self.agents.append(ag)
        return ag

    def netns(self):
        ns = lab.Netns(lab.unique("kb-"))
        self.namespaces.append(ns)
        return ns

    def drop_netns(self, ns):
        ns.remove()
        self.namespaces.remove(ns)

    def remove(self):
        for ns in self.namespaces:
            ns.remove()
        for ag in self.agents:
            try:
                ag.cleanup()
            except Exception as exc:  # keep removing the rest
                print("cleanup of agent %s: %s" % (ag.name, exc), file=sys.stderr)
        for bridge in self.bridges:
            subprocess.run(["ip", "link", "del", bridge], capture_output=True)
        if self.etcd is not None and self.etcd.poll() is None:
            self.etcd.terminate()
            try:
                self.etcd.wait(10)
            except subprocess.TimeoutExpired:
                self.etcd.kill()
                self.etcd.wait(5)
        shutil.rmtree(self.work, ignore_errors=True)


def etcdctl(*args, check=True):
    return subprocess.run(["etcdctl", "--endpoints", ETCD_URL, *args], capture_output=True,
                          text=True, check=check, env=dict(os.environ, ETCDCTL_API="3"))


def etcd_db_size():
    return json.loads(etcdctl("endpoint", "status", "-w", "json").stdout)[0]["Status"]["dbSize"]


def list_prefix():
    """(seconds, MiB, keys) of one list of the whole prefix, as an agent's start does."""
    from agent.kvstore.etcd import Etcd
    etcd = Etcd([ETCD_URL], timeout=30.0)
    try:
        started = time.monotonic()
        _, items = etcd.list(PREFIX + "/")
        took = time.monotonic() - started
    finally:
        etcd.close()
    return took, sum(len(i.key) + len(i.value) for i in items) / 2**20, len(items)


def proc_usage(pid):
    """(CPU seconds, RSS bytes) of a process."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    with open("/proc/%d/status" % pid) as f:
        rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    return cpu, rss


def pct(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


class PinnedIpcache:
    """An agent's pinned ipcache map, read by this process."""

    def __init__(self, agent):
        from datapath import bpfsys
        from datapath.maps import ipcache
        self._sys, self._mod = bpfsys, ipcache
        self.fd = bpfsys.obj_get(agent.bpf_root + "/maps/ipcache")

    def get(self, addr):
        raw = self._sys.lookup(self.fd, self._mod.ipcache_key(addr + "/32"),
                               self._mod.IPCACHE_VAL.size)
        return None if raw is None else self._mod.IPCACHE_VAL.unpack(raw)[0]

    def entries(self):
        """Every prefix in the map (a walk: for small maps)."""
        return [self._mod.ipcache_cidr(k) for k in self._sys.keys(self.fd, self._mod.IPCACHE_KEY.size)]

    def count(self):
        return len(self._sys.keys(self.fd, self._mod.IPCACHE_KEY.size))

    def close(self):
        os.close(self.fd)


class NewEntries(threading.Thread):
    """Notes when each entry first appears in a (small) ipcache map, from
    before an ADD starts: node 2 may hold a pod's address before node 1's
    ADD has returned (the agent publishes while the plugin is still
    answering)."""

    def __init__(self, ipcache):
        super().__init__(daemon=True)
        self._ipcache = ipcache
        self._known = set(ipcache.entries())
        self._seen = {}
        self._done = threading.Event()
        self.start()

    def run(self):
        while not self._done.is_set():
            for cidr in self._ipcache.entries():
                if cidr not in self._known and cidr not in self._seen:
                    self._seen[cidr] = time.monotonic()
            time.sleep(0.0005)

    def wait(self, addr, deadline):
        """When `addr`/32 appeared, or None by the deadline."""
        try:
            while time.monotonic() < deadline:
                if addr + "/32" in self._seen:
                    return self._seen[addr + "/32"]
                time.sleep(0.001)
            return None
        finally:
            self._done.set()
            self.join(2)


def labels_args(labels):
    return {"cni": {"labels": [{"key": k, "value": v} for k, v in labels.items()]}}


# --- 1. ADD latency ---

def add_latency(lb, n1, others, sqlite, pods):
    """`others`: the other etcd agents, paused (SIGSTOP) for the "etcd, alone"
    samples: on a real cluster they run on other machines, here they share
    this one's two cores and apply every key node 1 writes."""
    bridge_bin = os.path.join(lab.REFERENCE_PLUGINS, "bridge")
    nets = {}
    for name, ag, bridge, subnet in (("etcd", n1, "kbbr0", "10.88.0.0/24"),
                                     ("sqlite", sqlite, "kbbr2", "10.88.2.0/24")):
        nets[name] = (bridge_net("kb-" + name, bridge, subnet, os.path.join(lb.work, "ipam-" + name)),
                      cilium_netconf("kb-" + name, ag.socket, os.path.join(lb.work, "plugin.log")))
    times = {}
    kinds = [(agent, ident) for ident in ("known", "new")
             for agent in ("etcd", "etcd, others paused", "sqlite")]
    for i in range(pods + 3):  # the first 3 warm caches (and allocate "known") and are not counted
        order = kinds[i % len(kinds):] + kinds[:i % len(kinds)]
        for agent, ident in order:
            net, ours = nets[agent.split(",")[0]]
            labels = {"app": "kb-known"} if ident == "known" else {"app": "kb-new", "pod": "p%d" % i}
            ns = lb.netns()
            cid = "kb%d%s%03d" % (kinds.index((agent, ident)), ident[0], i)
            paused = agent.endswith("paused")
            _, prev = timed(bridge_bin, "ADD", net, cid, ns.path, lab.REFERENCE_PLUGINS)
            conf = dict(ours, prevResult=prev, args=labels_args(labels))
            for ag in others if paused else ():
                os.kill(ag.proc.pid, signal.SIGSTOP)
            try:
                ms, _ = timed(lab.PLUGIN_BIN, "ADD", conf, cid, ns.path, lab.REFERENCE_PLUGINS)
                time.sleep(SETTLE)
            finally:
                for ag in others if paused else ():
                    os.kill(ag.proc.pid, signal.SIGCONT)
            timed(lab.PLUGIN_BIN, "DEL", conf, cid, ns.path, lab.REFERENCE_PLUGINS)
            timed(bridge_bin, "DEL", dict(net, prevResult=prev), cid, ns.path, lab.REFERENCE_PLUGINS)
            lb.drop_netns(ns)
            time.sleep(SETTLE)  # what the last sample set off (watchers applying it) is done
            if i >= 3:
                times.setdefault((agent, ident), []).append(ms)
    print("\n== 1. ADD latency of the cilium-cni plugin, %d pods each, interleaved ==" % pods)
    print("%-32s %10s %10s" % ("agent, identity", "median ms", "p99 ms"))
    for key in kinds:
        v = times[key]
        print("%-32s %10.1f %10.1f" % ("%s; %s" % key, statistics.median(v), p99(v)))
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med[("etcd", "known")] / med[("sqlite", "known")]
    alone = med[("etcd, others paused", "known")] / med[("sqlite", "known")]
    print("ratio etcd/sqlite ADD median, known identity: %.2f" % ratio)
    print("ratio etcd/sqlite ADD median, known identity, other agents paused: %.2f" % alone)
    print("a new identity costs over a known one (median): etcd %+.1f ms, sqlite %+.1f ms" % (
        med[("etcd", "new")] - med[("etcd", "known")],
        med[("sqlite", "new")] - med[("sqlite", "known")]))
    new = times[("etcd", "new")]
    print(target_line("ADD with etcd, known identity, within 10% of sqlite (<= 1.10)",
                      ratio <= 1.10, "%.2f; %.2f with the other agents paused" % (ratio, alone)))
    print(target_line("ADD with etcd, new identity per pod, p99 <= 20 ms", p99(new) <= 20.0,
                      "p50 %.1f ms, p99 %.1f ms" % (statistics.median(new), p99(new))))


# --- 2. propagation ---

def propagation(lb, n1, n2, pods):
    chain1 = lab.Chain(lab.bridge_conflist("kb-n1", "kbbr0", "10.88.0.0/24",
                                           os.path.join(lb.work, "ipam-etcd"), n1.socket),
                       "%s:%s" % (lab.REFERENCE_PLUGINS, os.path.dirname(lab.PLUGIN_BIN)))
    chain2 = lab.Chain(lab.bridge_conflist("kb-n2", "kbbr1", "10.88.1.0/24",
                                           os.path.join(lb.work, "ipam-n2"), n2.socket),
                       "%s:%s" % (lab.REFERENCE_PLUGINS, os.path.dirname(lab.PLUGIN_BIN)))
    server_ns = lb.netns()
    server_ip = chain2.add("kbsrv", server_ns.path, labels={"app": "web"})["ips"][0]["address"].split("/")[0]
    server = lab.EchoServer(server_ns, "udp", SERVER_PORT)
    policy = os.path.join(lb.work, "policy.yaml")
    with open(policy, "w") as f:
        f.write(POLICY)
    lab.cli(n2, "policy", "import", policy)
    ipcache2 = PinnedIpcache(n2)
    added = []  # (chain, cid, ns): deleted at the end
    to_ipcache, to_answer, sent, add_ms = [], [], [], []
    try:
        # The policy must be in force on node 2 before anything is timed:
        # a pod with other labels is denied (and one with app=client allowed).
        other = lb.netns()
        chain1.add("kbother", other.path, labels={"app": "other"})
        added.append(("kbother", other))
        denied = not lab.talks(other, "udp", server_ip, SERVER_PORT, timeout=1.0)
        print("\n== 2. propagation node 1 -> node 2, %d new app=client pods ==" % pods)
        print("check: a pod app=other on node 1 is denied by node 2: %s" % denied)
        for i in range(pods):
            ns = lb.netns()
            probe = subprocess.Popen(["ip", "netns", "exec", ns.name, "python3", "-c", PROBE,
                                      server_ip, str(SERVER_PORT), "5"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            cid = "kbcl%03d" % i
            try:
                if probe.stdout.readline().strip() != "ready":
                    raise RuntimeError("the probe in %s did not start" % ns.name)
                entries = NewEntries(ipcache2)
                started = time.monotonic()
                result = chain1.add(cid, ns.path, labels={"app": "client"})
                t0 = time.monotonic()
                probe.stdin.write("go\n")
                probe.stdin.flush()
                added.append((cid, ns))
                addr = result["ips"][0]["address"].split("/")[0]
                line = probe.stdout.readline().split()
                seen = entries.wait(addr, t0 + 5.0)
            finally:
                if probe.poll() is None:
                    probe.kill()
                probe.wait(5)
            add_ms.append((t0 - started) * 1000)
            if seen is not None:
                to_ipcache.append((seen - t0) * 1000)
            if line and line[0] == "ok":
                to_answer.append((float(line[1]) - t0) * 1000)
                sent.append(int(line[2]))
            else:
                print("pod %s (%s): no answer within 5 s (ipcache %s)" % (
                    cid, addr, "had it" if seen else "never had it"))
    finally:
        ipcache2.close()
        server.stop()
        for cid, ns in reversed(added):
            try:
                chain1.delete(cid, ns.path)
            except lab.PluginFailed as exc:
                print("DEL %s: %s" % (cid, exc), file=sys.stderr)
            lb.drop_netns(ns)
        chain2.delete("kbsrv", server_ns.path)
        lb.drop_netns(server_ns)
    print("%-44s %6s %9s %9s %9s" % ("from ADD returning on node 1 until", "pods", "p50 ms",
                                     "p99 ms", "max ms"))
    for what, v in (("node 2's ipcache map holds the address", to_ipcache),
                    ("node 2 answers the pod's probe (enforcing)", to_answer)):
        if v:
            print("%-44s %6d %9.1f %9.1f %9.1f" % (what, len(v), statistics.median(v), p99(v),
                                                   max(v)))
    if sent:
        print("probe datagrams sent until the first answer: median %d (one every 5 ms)"
              % statistics.median(sent))
    if to_ipcache:
        print("node 2's ipcache held the address before node 1's ADD returned for %d of %d pods"
              " (the ADD itself: median %.1f ms)" % (sum(1 for v in to_ipcache if v <= 0),
                                                    len(to_ipcache), statistics.median(add_ms)))
    ok = len(to_answer) == pods
    p50 = statistics.median(to_answer) if to_answer else float("inf")
    p_99 = p99(to_answer) if to_answer else float("inf")
    figure = "p50 %.1f ms, p99 %.1f ms, %d/%d answered" % (p50, p_99, len(to_answer), pods)
    print(target_line("propagation p99 <= 1 s", ok and p_99 <= 1000, figure))
    print(target_line("propagation p50 <= 100 ms", ok and p50 <= 100, figure))


# --- 3. scale by simulation ---

def sim_address(publisher, k):
    return str(ipaddress.ip_address(SIM_BASE + (publisher << 16) + k))


def publisher_main(index, offset, endpoints, identities, conn):
    """One simulated node: its lease, its share of the identities (id and
    labels keys, no lease; its use keys under the lease) and its endpoints'
    ip keys, written in transactions of BATCH operations. Waits for
    'withdraw', then revokes the lease (etcd deletes its keys) and deletes
    the identities it made."""
    from agent import labels as lbl
    from agent.kvstore import layout
    from agent.kvstore.etcd import Etcd
    etcd = Etcd([ETCD_URL], timeout=30.0)
    keys = layout.Layout(PREFIX)
    node = "kb-sim-%d" % index
    lease = etcd.grant(120)
    etcd.keep_alive(lease, 20.0, lambda: None)
    conn.send("ready")
    conn.recv()  # "go"
    started = time.monotonic()
    ops, size, count = [], 0, 0

    def put(key, value, with_lease):
        nonlocal size, count
        count += 1
        ops.append(etcd.op_put(key, value, lease=lease if with_lease else 0))
        size += len(key) + len(value)
        if len(ops) == BATCH:
            flush()

    def flush():
        if ops:
            etcd.txn([], ops)
            del ops[:]

    put(keys.node_key(node), layout.encode({"name": node, "addresses": [], "podCIDRs": [],
                                            "version": "sim", "startedAt": time.time()}), True)
    # Endpoint g (counted over all publishers) has identity g // 20: each
    # identity is used by one or two publishers; the first of them creates it.
    used = sorted({(offset + k) // ENDPOINTS_PER_IDENTITY % len(identities)
                   for k in range(endpoints)})
    for j in used:
        number = identities[j]
        text = lbl.canonical({(lbl.SOURCE_K8S, "app", "kb-sim-%d" % number)})
        if offset <= j * ENDPOINTS_PER_IDENTITY < offset + endpoints:
            put(keys.id_key(number), layout.encode({"labels": text}), False)
            put(keys.labels_key(text), layout.encode({"id": number}), False)
        put(keys.user_key(number, node), layout.encode({}), True)
    ip_bytes = 0
    for k in range(endpoints):
        number = identities[(offset + k) // ENDPOINTS_PER_IDENTITY % len(identities)]
        key = keys.ip_key(sim_address(index, k) + "/32")
        value = layout.encode({"identity": number, "node": node})
        ip_bytes += len(key) + len(value)
        put(key, value, True)
    flush()
    conn.send({"seconds": time.monotonic() - started, "bytes": size, "keys": count, "ip_bytes": ip_bytes,
               "last": sim_address(index, endpoints - 1) if endpoints else None})
    conn.recv()  # "withdraw"
    etcd.revoke(lease)
    etcd.delete_prefix(keys.ids)
    etcd.delete_prefix(keys.labels)
    conn.send("done")
    etcd.close()


def scale(lb, agents, total, publishers):
    ctx = multiprocessing.get_context("spawn")  # no fork of a process with gRPC threads
    n_ids = max(1, total // ENDPOINTS_PER_IDENTITY)
    identities = list(range(SIM_IDENTITY_TOP, SIM_IDENTITY_TOP - n_ids, -1))
    share = [total // publishers + (1 if p < total % publishers else 0) for p in range(publishers)]
    procs, conns = [], []
    maps = [PinnedIpcache(ag) for ag in agents]
    try:
        for p in range(publishers):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=publisher_main, args=(p, sum(share[:p]), share[p], identities, child),
                               daemon=True)
            proc.start()
            procs.append(proc)
            conns.append(parent)
        for c in conns:
            if not c.poll(60) or c.recv() != "ready":
                raise RuntimeError("a simulated publisher did not start")
        before_db = etcd_db_size()
        before_maps = [m.count() for m in maps]
        before = [proc_usage(ag.proc.pid) for ag in agents]
        before_events = [ag.api("GET", "/v1/status")[1]["kvstore"]["watchEvents"] for ag in agents]
        etcd_before = proc_usage(lb.etcd.pid)
        t0 = time.monotonic()
        for c in conns:
            c.send("go")
        written = [c.recv() for c in conns]
        t_written = time.monotonic() - t0
        lasts = [w["last"] for w in written if w["last"]]
        converged = [None] * len(agents)
        deadline = time.monotonic() + 60.0
        while None in converged and time.monotonic() < deadline:
            for i, m in enumerate(maps):
                if converged[i] is None and all(m.get(a) is not None for a in lasts):
                    converged[i] = time.monotonic() - t0
            time.sleep(0.02)
        after = [proc_usage(ag.proc.pid) for ag in agents]
        etcd_after = proc_usage(lb.etcd.pid)
        after_events = [ag.api("GET", "/v1/status")[1]["kvstore"]["watchEvents"] for ag in agents]
        counts = [m.count() - b for m, b in zip(maps, before_maps, strict=True)]
        after_db = etcd_db_size()
        listing = list_prefix()
        t1 = time.monotonic()
        for c in conns:
            c.send("withdraw")
        for c in conns:
            c.recv()
        dropped = [None] * len(agents)
        while None in dropped and time.monotonic() < t1 + 60.0:
            for i, m in enumerate(maps):
                if dropped[i] is None and m.count() <= before_maps[i]:
                    dropped[i] = time.monotonic() - t1
            time.sleep(0.1)
    finally:
        for m in maps:
            m.close()
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
            proc.join(10)
    keys_total = sum(w["bytes"] for w in written)
    ip_total = sum(w["ip_bytes"] for w in written)
    events = [a - b for a, b in zip(after_events, before_events, strict=True)]
    print("\n-- %d simulated endpoints from %d publishers, %d identities --" % (
        total, publishers, n_ids))
    print("written in %.1f s (%d ops per transaction, %d keys/s)" % (
        t_written, BATCH, (total + 2 * n_ids + n_ids * publishers) / t_written))
    print("etcd: key+value bytes per endpoint: %.0f (ip key alone %.0f); db size +%.1f MiB "
          "= %.0f bytes per endpoint; etcd CPU %.1f s, RSS %+.0f MiB" % (
              keys_total / total, ip_total / total, (after_db - before_db) / 2**20,
              (after_db - before_db) / total, etcd_after[0] - etcd_before[0],
              (etcd_after[1] - etcd_before[1]) / 2**20))
    print("one list of the whole prefix (what every agent does at start): %.2f s, %.1f MiB, "
          "%d keys" % listing)
    print("%-8s %10s %12s %10s %12s %14s %14s %12s" % (
        "agent", "converged", "ipcache +", "events", "events/s", "CPU s/10k ep", "RSS MiB/10k",
        "dropped in"))
    for i, ag in enumerate(agents):
        conv = converged[i]
        print("%-8s %9s %12d %10d %12s %14.2f %14.1f %12s" % (
            ag.name, "%.1f s" % conv if conv else "never", counts[i], events[i],
            "%.0f" % (events[i] / conv) if conv else "-",
            (after[i][0] - before[i][0]) * 10000 / total,
            (after[i][1] - before[i][1]) / 2**20 * 10000 / total,
            "%.1f s" % dropped[i] if dropped[i] is not None else "never"))
    for i, ag in enumerate(agents):
        if converged[i] is None or counts[i] != total:
            errors = [line for line in ag.log().splitlines() if "kvstore" in line and (
                "failed" in line or "rror" in line)]
            print("%s did not take them all; its log says: %s" % (
                ag.name, errors[-1][-300:] if errors else "nothing about kvstore"))
    print("ipcache map: %d of %d entries used at the peak (%s)" % (
        max(before_maps) + max(counts), IPCACHE_CAPACITY,
        "fits" if max(before_maps) + total <= IPCACHE_CAPACITY else "DOES NOT FIT"))
    ok = all(c is not None for c in converged) and all(c == total for c in counts)
    return ok, ("%.1f s" % max(converged)) if ok else "%d of %d agents never" % (
        converged.count(None) or sum(1 for c in counts if c != total), len(agents))


SCALE_NOTE = """\
Where it breaks (figures above): every agent applies every remote endpoint
one watch event at a time in Python (one bpf syscall each), so events per
second per agent bound a cluster's pod churn; the ipcache map holds 65,536
entries (local, host and CIDR entries included), so a cluster beyond ~65,000
pods does not fit: the entries that find no room are logged as not in the
ipcache (their pods are world to policy there) and retried every few
seconds until there is room (agent/kvstore/cluster.py); every agent lists
the whole prefix at start (one range read). Cilium met the same walls: it
moved pod state from per-pod kvstore keys to CiliumEndpointSlices (batches
of pods per object) and to the identity-and-ipcache sync of clustermesh /
kvstoremesh, where one cache per cluster fans out to the agents, and sized
its ipcache at 512k entries."""


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--pods", type=int, default=60)
    parser.add_argument("--propagation-pods", type=int, default=100)
    parser.add_argument("--scale", default="5000,50000",
                        help="simulated endpoint counts, comma-separated")
    parser.add_argument("--publishers", type=int, default=8)
    opts = parse_args(parser, {"pods": 2, "propagation_pods": 3, "scale": "200",
                               "publishers": 2})
    sizes = [int(s) for s in opts.scale.split(",") if s]
    print_machine()
    lb = Lab()
    began = time.monotonic()
    try:
        lb.start_etcd()
        n1, n2, n3 = (lb.agent(n, node="kb-" + n) for n in ("n1", "n2", "n3"))
        sqlite = lb.agent("sqlite")
        lb.bridges += ["kbbr0", "kbbr1", "kbbr2"]
        for ag in lb.agents:  # in parallel: each compiles its programs
            ag.start_process()
        for ag in lb.agents:
            ag.wait_ready(120)
        print("etcd %s at %s (prefix %s/); agents kb-n1 kb-n2 kb-n3 (etcd), sqlite: ready in "
              "%.1f s" % (etcdctl("version").stdout.split()[2], ETCD_URL, PREFIX,
                          time.monotonic() - began))
        add_latency(lb, n1, (n2, n3), sqlite, opts.pods)
        print("(%.1f s so far)" % (time.monotonic() - began))
        propagation(lb, n1, n2, opts.propagation_pods)
        print("(%.1f s so far)" % (time.monotonic() - began))
        print("\n== 3. scale by simulation: 3 agents watching ==")
        sqlite.cleanup()
        lb.agents.remove(sqlite)
        for total in sizes:
            ok, figure = scale(lb, [n1, n2, n3], total, opts.publishers)
            print(target_line("%d simulated endpoints in every agent's ipcache" % total, ok,
                              figure))
        print(SCALE_NOTE)
    finally:
        lb.remove()
    print("(%.1f s in all, removal included)" % (time.monotonic() - began))


if __name__ == "__main__":
    main()
