"""Benchmark: latency per HTTP GET through a service, by number of services defined.

In one run, for 1, 100, 1,000, 5,000 and 10,000 services (`--services`), one
stage per count, a client pod sends `--requests` sequential HTTP GETs
(`ab -c 1`: a new TCP connection per request, so every request is a new
connection through the service) to a backend in another pod, through a
ClusterIP service, and `ab -e` records the latency of each request
(connect + request + response, microsecond resolution). Configurations:

Every configuration's pods hang off a node of their own: a network namespace
standing in for the node, where the pods' host veths, routes and iptables
rules live (the host's tables are never touched), and where the agent
serving that node runs. Every node has the same masquerade rule for pod
traffic leaving the cluster range (what ptp's ipMasq writes; no measured
packet matches it), so netfilter conntrack is active on all of them as on
a real node. Configurations:

- direct: client -> backend pod IP, no service address, on cilium-cni's
  node (ptp -> cilium-cni: programs on both host veths; the client runs
  in the cgroup with the socket load-balancing hooks, which find nothing to
  translate). The "talking to the backend directly" figure;
- direct, no programs: the same with ptp alone (no cilium-cni, no
  programs, no hooks) on a node of its own: what cilium-cni's programs cost;
- cilium-cni socket LB: client -> ClusterIP from inside the cgroup where the
  agent attached its connect/sendmsg/recvmsg hooks: the address is
  translated once, in connect();
- cilium-cni per-packet: client -> ClusterIP from outside that cgroup: the
  from-container program translates each packet (conntrack keeps the
  connection on its backend, replies are reverse-translated);
- iptables: the same pods and plugin (ptp alone, no cilium-cni) on a node
  with kube-proxy's iptables rules for the N services (tests/kubeproxy.py:
  KUBE-SERVICES, KUBE-SVC-*, KUBE-SEP-*, `statistic --mode random`,
  KUBE-MARK-MASQ, KUBE-POSTROUTING, KUBE-FORWARD, and the jumps from the
  built-in chains), loaded with one `iptables-restore --noflush` per stage as
  kube-proxy does, through iptables-legacy by default (`--iptables`;
  Debian's nf_tables-backed `iptables` needed 304 s here to restore 10,000
  services); client -> ClusterIP;
- iptables direct: client -> backend pod IP on that node: what the rules
  cost pod-to-pod traffic that is not for a service (a new connection still
  walks KUBE-SERVICES in nat PREROUTING);
- iptables + cilium-cni programs: kube-proxy's rules as for "iptables", in
  a second node namespace whose pods are chained ptp -> cilium-cni, served
  by a second agent running in that namespace (no services, no socket
  hooks): the node an operator has when cilium-cni enforces policy and
  kube-proxy still does the services. Against "iptables" on bare ptp, ours
  also pays for the per-endpoint programs; against this one only the
  service handling differs.

The N services are the measured one (`default/bench-target:http`, one
backend: the server pod) and N - 1 others with two backends each (addresses
never contacted). In KUBE-SERVICES the measured service comes last, after
the other N - 1 services' rules: the worst case; kube-proxy orders services
as Go's map iteration does, so a service sits in the middle on average.
cilium-cni gets the same services through `cilium-cni service import`
(Service + EndpointSlice YAML, one request for the whole set).

Every measurement uses a fresh client source address (`ab -B`) so that no
4-tuple seen by the server repeats across configurations (the server's
TIME_WAIT sockets would otherwise refuse the SYN: PAWS); client pinned to
CPU 0, server to CPU 1. Within a stage, repetitions (`--reps`) go round the
configurations in a rotating order. Client and server run at nice -20: the
machine is shared, and other work should wait while a request is in
flight rather than the request waiting for it. Each measurement records the share of
its wall time during which some task waited for a CPU (/proc/pressure/cpu);
the table counts those above `--contended` (on this shared machine most are:
every figure uses all repetitions, so that each count is summarised the
same way). Reported per configuration and count: the median over
repetitions of each repetition's median latency, and ratios taken within a
repetition (configuration / the same repetition's `direct` or `iptables`),
medians over repetitions.

Every closed connection stays in conntrack for 120 s (TIME_WAIT), and the
host's table is shared with everything else on the machine: before each
measurement the script waits until the host's and the node's tables are
below half of nf_conntrack_max with room for it.

The script prints figures and ratios, and the targets with the measured
value; it asserts none of them. `--plot FILE` writes a PNG (matplotlib).
Nothing is changed in the host's network namespace: the nodes' and pods'
namespaces hold the veths, routes (a route for the client's extra source
addresses on its host veth, an `unreachable` route for the ClusterIP range
on cilium-cni's node) and rules; the agents have their own sockets, state
and bpf roots, and `cgroup-root` of cilium-cni's node is a cgroup v2 of the
benchmark's own, so no other process on the machine goes through its
hooks. All of it is removed at the end, on failure and on SIGTERM too.

    scripts/bench-services [--services 1,100,1000,5000,10000] [--reps 8]
                           [--requests 1000] [--plot docs/services-latency.png]
"""

import argparse
import csv
import ipaddress
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scripts.bench_throughput import cpu_pressure, tidy  # noqa: E402
from scripts.benchlib import parse_args, print_machine, target_line  # noqa: E402
from tests import kubeproxy, lab  # noqa: E402

HTTP_PORT, SERVICE_PORT = 8080, 80
# Into a node's netns only: `ip netns exec` would also remount /sys, hiding the
# host's bpffs and cgroup hierarchy from the agent.
def nsenter(node):
    return ("nsenter", "--net=" + node.path)
CLIENT_CPU, SERVER_CPU = "0", "1"
NICE = "-20"  # the machine is shared: other work waits while a request is in flight
CGROUP_ROOT = "/sys/fs/cgroup/unified"
OURS = ("cilium-cni socket LB", "cilium-cni per-packet")
IPT_PROGS = "iptables + cilium-cni programs"
CONFIGS = ("direct", "direct, no programs") + OURS + ("iptables", "iptables direct", IPT_PROGS)
TARGET = ("default", "bench-target", "http")
PLOT_TITLE = "HTTP GET through a ClusterIP service, ab -c 1, %s requests x %s reps; %s"

HTTP_SERVER = r"""
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(1024)
reply = (b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n"
         b"Connection: close\r\n\r\nok\n")
print("ready", flush=True)
while True:
    c, _ = s.accept()
    try:
        c.settimeout(5)
        data = b""
        while b"\r\n\r\n" not in data:
            d = c.recv(4096)
            if not d:
                break
            data += d
        if data:
            c.sendall(reply)
    except OSError:
        pass
    c.close()
"""


def services(count, vip_net, filler_net):
    """count kube-proxy Services: count - 1 fillers, then the measured one (last)."""
    out = []
    for i in range(1, count):
        a, b = divmod(i, 250)
        out.append(kubeproxy.Service(
            "bench", "svc-%05d" % i, "http", "%s.%d.%d" % (vip_net, a, b + 1), SERVICE_PORT,
            ("%s.%d.%d:%d" % (filler_net, a, b + 1, HTTP_PORT),
             "%s.%d.%d:%d" % (filler_net, a + 100, b + 1, HTTP_PORT))))
    return out


def target_service(vip, backend):
    return kubeproxy.Service(*TARGET, vip, SERVICE_PORT, ("%s:%d" % (backend, HTTP_PORT),))


def k8s_yaml(svcs):
    """Service + EndpointSlice documents for `cilium-cni service import`."""
    docs = []
    for s in svcs:
        docs.append(
            "apiVersion: v1\nkind: Service\nmetadata: {name: %s, namespace: %s}\n"
            "spec:\n  type: ClusterIP\n  clusterIP: %s\n"
            "  ports: [{name: %s, port: %d, protocol: %s, targetPort: %d}]\n"
            % (s.name, s.namespace, s.cluster_ip, s.port_name, s.port, s.protocol, HTTP_PORT))
        eps = "".join("- addresses: [%s]\n  conditions: {ready: true}\n" % e.rsplit(":", 1)[0]
                      for e in s.endpoints)
        docs.append(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"
            "metadata: {name: %s-1, namespace: %s, labels: {kubernetes.io/service-name: %s}}\n"
            "addressType: IPv4\nports: [{name: %s, port: %d, protocol: %s}]\nendpoints:\n%s"
            % (s.name, s.namespace, s.name, s.port_name, HTTP_PORT, s.protocol, eps))
    return "---\n".join(docs)


class Side:
    """A client and a server pod on one ptp network, the client with spare source addresses."""

    def __init__(self, name, chain, ns_prefix, pool):
        self.name, self.chain, self.ns_prefix, self.pool = name, chain, ns_prefix, pool
        self.ns, self.ip, self.host_if, self.server = {}, {}, {}, None
        self.spare = [str(a) for a in ipaddress.ip_network(pool).hosts()]

    def add(self, namespaces):
        for role in ("client", "server"):
            ns = lab.Netns()
            namespaces.append(ns)
            result = self.chain.add("%s-%s" % (self.name, role), ns.path)
            self.ns[role], self.ip[role] = ns, result["ips"][0]["address"].split("/")[0]
            self.host_if[role] = next(i["name"] for i in result["interfaces"]
                                      if not i.get("sandbox"))
        # Replies to the spare source addresses go back the client's veth.
        lab.sh(*self.ns_prefix, "ip", "route", "add", self.pool, "dev",
               self.host_if["client"])

    def delete(self):
        for role in ("client", "server"):
            if role in self.ns:
                tidy(self.chain.delete, "%s-%s" % (self.name, role), self.ns[role].path)

    def start_server(self):
        self.server = subprocess.Popen(
            ["ip", "netns", "exec", self.ns["server"].name, "taskset", "-c", SERVER_CPU,
             "nice", "-n", NICE, "python3", "-c", HTTP_SERVER, str(HTTP_PORT)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if self.server.stdout.readline().strip() != "ready":
            raise RuntimeError("http server did not start: %s" % self.server.stderr.read())

    def stop_server(self):
        if self.server is not None:
            if self.server.poll() is None:
                self.server.kill()
            self.server.wait(5)

    def fresh_source(self):
        if not self.spare:
            raise RuntimeError("%s: out of fresh client source addresses" % self.name)
        addr = self.spare.pop(0)
        self.ns["client"].run("ip", "addr", "add", addr + "/32", "dev", "eth0")
        return addr

    def ab(self, url, requests, cgroup, work):
        """Median, mean and p99 latency in microseconds of `requests` GETs from a fresh source;
        None if a request got no answer within 5 s (ab gives up the run there)."""
        src = self.fresh_source()
        out_csv = os.path.join(work, "ab.csv")
        cmd = ["ip", "netns", "exec", self.ns["client"].name, "taskset", "-c", CLIENT_CPU,
               "nice", "-n", NICE, "ab", "-q", "-n", str(requests), "-c", "1", "-s", "5",
               "-B", src, "-e", out_csv, url]
        if cgroup:  # enter the cgroup first, then become ab
            cmd = ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', cgroup, *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        self.ns["client"].run("ip", "addr", "del", src + "/32", "dev", "eth0", check=False)
        complete = re.search(r"Complete requests:\s+(\d+)", proc.stdout)
        failed = re.search(r"Failed requests:\s+(\d+)", proc.stdout)
        if "timeout specified has expired" in proc.stdout + proc.stderr:
            done = re.search(r"Total of (\d+) requests completed", proc.stdout)
            return {"stalled": int(done.group(1)) if done else -1, "src": src}
        if proc.returncode != 0 or not complete or int(complete.group(1)) != requests \
                or int(failed.group(1)) != 0:
            raise RuntimeError("ab %s from %s failed: %s %s" % (url, src, proc.stdout[-1500:],
                                                               proc.stderr[-500:]))
        mean_ms = float(re.search(r"Time per request:\s+([\d.]+) \[ms\] \(mean\)",
                                  proc.stdout).group(1))
        with open(out_csv) as f:
            pct = {int(row[0]): float(row[1]) for row in csv.reader(f) if row[0].isdigit()}
        return {"median": pct[50] * 1000, "mean": mean_ms * 1000, "p99": pct[99] * 1000}

    def get(self, addr, port):
        """One GET from the client's own address: the body, or the error."""
        out = self.ns["client"].run(
            "python3", "-c", "import socket,sys\n"
            "s=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=2)\n"
            "s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\nd=b''\nwhile True:\n"
            "    x=s.recv(4096)\n    if not x: break\n    d+=x\n"
            "print(d.split(b'\\r\\n\\r\\n',1)[1].decode().strip())",
            addr, str(port), check=False, timeout=20)
        return out.stdout.strip() or out.stderr.strip().splitlines()[-1]


class KubeProxyRules:
    """kube-proxy's rules inside the node namespace; removes exactly the chains it made."""

    def __init__(self, node, binary, cluster_cidr):
        self.node, self.bin, self.cidr = node, binary, cluster_cidr
        self.chains = {"filter": set(), "nat": set()}
        self.jumps = False

    def restore(self, data):
        t0 = time.perf_counter()
        proc = subprocess.run(["ip", "netns", "exec", self.node.name, self.bin + "-restore",
                               "--noflush"], input=data, text=True, capture_output=True)
        if proc.returncode != 0:
            raise RuntimeError("%s-restore failed: %s" % (self.bin, proc.stderr[-2000:]))
        return time.perf_counter() - t0

    def load(self, svcs):
        """One iptables-restore, as a kube-proxy sync writes it; returns seconds."""
        text, chains = kubeproxy.restore_input(svcs, self.cidr)
        for table, names in chains.items():
            self.chains[table].update(names)
        seconds = self.restore(text)
        if not self.jumps:
            self.jumps = True
            self.restore(kubeproxy.jump_rules())
        return seconds

    def rules(self, table, chain):
        out = self.node.run(self.bin, "-t", table, "-S", chain).stdout
        return [x for x in out.splitlines() if x.startswith("-A ")]

    def dnat_packets(self, chain):
        out = self.node.run(self.bin, "-t", "nat", "-L", chain, "-v", "-x", "-n").stdout
        return sum(int(x.split()[0]) for x in out.splitlines()[2:] if "DNAT" in x)

    def remove(self):
        """One iptables-restore deleting the jumps and exactly the chains we declared."""
        if self.jumps or any(self.chains.values()):
            self.restore(kubeproxy.removal_input(self.chains, jumps=self.jumps))
        left = [x for t in self.chains for x in self.node.run(self.bin + "-save", "-t", t)
                .stdout.splitlines() if "KUBE-" in x]
        if left:
            raise RuntimeError("kube-proxy rules left in %s: %s" % (self.node.name, left[:5]))


def conntrack_room(nodes, requests, fraction=0.5):
    """Wait until the host's and the nodes' conntrack tables have room for `requests` more
    connections under `fraction` of nf_conntrack_max (closed ones linger 120 s in
    TIME_WAIT; a full table would drop everyone's new connections on this shared machine)."""
    limit = int(lab.sh("cat", "/proc/sys/net/netfilter/nf_conntrack_max").stdout) * fraction
    deadline = time.monotonic() + 300
    while True:
        counts = [int(lab.sh(*prefix, "cat", "/proc/sys/net/netfilter/nf_conntrack_count",
                             check=False).stdout or 0)
                  for prefix in ((),) + tuple(("ip", "netns", "exec", node.name) for node in nodes)]
        if max(counts) + requests <= limit or time.monotonic() > deadline:
            return
        time.sleep(2)


def cli(agent, *args, timeout=600):
    proc = subprocess.run([lab.PLUGIN_BIN, *args, "--socket", agent.socket], capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError("cilium-cni %s failed: %s %s" % (" ".join(args), proc.stdout[-2000:],
                                                            proc.stderr[-2000:]))
    return proc.stdout


def ours_available():
    proc = subprocess.run([lab.PLUGIN_BIN, "service", "--help"], capture_output=True, text=True)
    return proc.returncode == 0


def plot(path, counts, value, configs, title):
    """Medians against the number of services, on a linear axis (iptables' cost is linear)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.8), dpi=100)
    styles = {"iptables": ("tab:red", "o", "-"), "iptables direct": ("tab:orange", "v", ":"),
              "cilium-cni per-packet": ("tab:blue", "s", "-"),
              "cilium-cni socket LB": ("tab:green", "^", "-"), "direct": ("tab:gray", "x", ":"),
              "direct, no programs": ("tab:brown", "+", ":"),
              IPT_PROGS: ("tab:purple", "D", "-")}
    for config in configs:
        color, marker, line = styles[config]
        ax.plot(counts, [value[(config, n)] for n in counts], marker=marker, color=color,
                linestyle=line, label=config)
    ax.set_xticks([n for n in counts if n >= 1000] + [0])
    ax.set_xticklabels(["{:,}".format(n) for n in counts if n >= 1000] + ["0"])
    ax.set_xlabel("services defined (points at %s)" % ", ".join("{:,}".format(n) for n in counts))
    ax.set_ylabel("latency per HTTP GET, median (µs)")
    ax.set_ylim(bottom=0)
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def replot(saved, path):
    """The PNG from the table and first line of a saved run (the same figures)."""
    if not path:
        raise SystemExit("--replot needs --plot FILE")
    with open(saved) as f:
        text = f.read()
    value, configs, counts = {}, [], []
    for m in re.finditer(r"^\| (.+?) \| ([\d,]+) \| (\d+) \|", text, re.M):
        config, n = m.group(1), int(m.group(2).replace(",", ""))
        value[(config, n)] = float(m.group(3))
        configs += [] if config in configs else [config]
        counts += [] if n in counts else [n]
    head = re.search(r"^(\d+) sequential GETs .*?(\d+) repetitions; .*; (iptables v.*)$", text,
                     re.M)
    if not value or not head:
        raise SystemExit("%s: no table of bench-services figures" % saved)
    plot(path, counts, value, configs, PLOT_TITLE % head.groups())


def main():
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up on kill, too
    signal.signal(signal.SIGHUP, lambda *_: sys.exit(129))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", default="1,100,1000,5000,10000",
                        help="comma-separated service counts, one stage each (ascending)")
    parser.add_argument("--reps", type=int, default=8, help="repetitions per configuration")
    parser.add_argument("--requests", type=int, default=1000, help="GETs per measurement")
    parser.add_argument("--iptables", default="iptables-legacy",
                        help="iptables binary for kube-proxy's rules (iptables-legacy, or "
                             "iptables: Debian's nf_tables backend, whose restore of 10,000 "
                             "services takes minutes)")
    parser.add_argument("--ours", choices=("auto", "yes", "no"), default="auto",
                        help="measure cilium-cni's services (auto: if the CLI has `service`)")
    parser.add_argument("--contended", type=float, default=0.25,
                        help="CPU pressure share above which a measurement counts as contended")
    parser.add_argument("--configs", help="comma-separated subset of: " + ", ".join(CONFIGS))
    parser.add_argument("--plot", help="write a PNG plot of the medians here")
    parser.add_argument("--replot", metavar="OUTPUT",
                        help="measure nothing: draw --plot from a saved output of this script")
    opts = parse_args(parser, {"services": "1", "reps": 1, "requests": 20})
    if opts.replot:
        return replot(opts.replot, opts.plot)
    print_machine()
    counts = sorted(int(x) for x in opts.services.split(","))
    if os.cpu_count() < 2:
        raise SystemExit("needs 2 CPUs (client and server are pinned apart)")
    if 3 * opts.reps * len(counts) > 510:
        raise SystemExit("at most 510 measurements per pod pair (fresh source addresses): "
                         "fewer --reps or counts")
    ours = opts.ours == "yes" or (opts.ours == "auto" and ours_available())
    configs = CONFIGS if ours else tuple(c for c in CONFIGS if c not in OURS)
    if opts.configs:
        wanted = [c.strip() for c in opts.configs.split(",")]
        unknown = [c for c in wanted if c not in CONFIGS]
        if unknown:
            raise SystemExit("unknown configuration(s) %s; known: %s" % (unknown, CONFIGS))
        configs = tuple(c for c in configs if c in wanted)

    started = time.monotonic()
    work = tempfile.mkdtemp(prefix="cilium-cni-bench-svc-")
    tag = lab.unique("")
    o = 16 * (int(tag[:2], 16) % 15)  # pods in 3 /24s, spare client addresses in 3 /23s
    pods_ours, pods_node, pods_plain, pods_node2 = ("10.217.%d" % (o + i) for i in (0, 1, 2, 3))
    vip_ours, vip_node, fillers = "10.211", "10.212", "10.209"
    cluster_cidr = "10.217.0.0/16"
    cgroup = os.path.join(CGROUP_ROOT, "cilium-cni-bench-" + tag)
    config = None
    if ours:  # socket load-balancing on a cgroup of the benchmark's own, not the whole node
        config = os.path.join(work, "agent.yaml")
        with open(config, "w") as f:
            f.write("socket-lb: true\ncgroup-root: %s\n" % cgroup)
    namespaces, nodes, sides, rules, rules2 = [], {}, {}, None, None
    agent = agent2 = None
    samples = {(c, n): [] for c in configs for n in counts}
    stalls = {}
    notes = {}

    def make_node(name, plugins):
        """A netns standing in for a node, and a bin dir whose plugins run inside it."""
        node = lab.Netns(lab.unique("ccni-%s-" % name))
        namespaces.append(node)
        nodes[name] = node
        bindir = os.path.join(work, name + "-bin")
        os.makedirs(bindir)
        for plugin, path in plugins:
            with open(os.path.join(bindir, plugin), "w") as f:
                f.write('#!/bin/sh\nexec nsenter --net=%s %s "$@"\n' % (node.path, path))
            os.chmod(os.path.join(bindir, plugin), 0o755)
        # Every node has its CNI's masquerade rule for pod traffic leaving the
        # cluster range (as ptp's ipMasq writes), so netfilter conntrack runs on
        # every node alike; no measured packet matches it.
        node.run(opts.iptables, "-t", "nat", "-A", "POSTROUTING", "-s", cluster_cidr, "!", "-d",
                 cluster_cidr, "-j", "MASQUERADE")
        return node, bindir

    def ptp(name, subnet, bindir, agent_=None):
        """ptp, then cilium-cni if an agent serves this node."""
        conf = {"cniVersion": "1.0.0", "name": "bench-svc-" + name, "plugins": [
            {"type": "ptp", "ipMasq": False,
             "ipam": {"type": "host-local", "subnet": subnet + ".0/24",
                      "routes": [{"dst": "0.0.0.0/0"}],
                      "dataDir": os.path.join(work, "ipam-" + name)}}]}
        if agent_ is not None:
            conf["plugins"].append({"type": "cilium-cni", "chaining-mode": "generic-veth",
                                    "agent-socket": agent_.socket,
                                    "log-file": os.path.join(work, "plugin-%s.log" % name)})
        return lab.Chain(conf, bindir + ":" + lab.REFERENCE_PLUGINS,
                         max_version=lab.REFERENCE_MAX_VERSION)

    try:
        # Each configuration's pods hang off a node of their own (a netns: its
        # host veths, routes and iptables rules live there; the host's tables are
        # never touched), the agents run in their node's netns.
        both = (("ptp", os.path.join(lab.REFERENCE_PLUGINS, "ptp")), ("cilium-cni", lab.PLUGIN_BIN))
        node_ours, bin_ours = make_node("ours", both)
        node_plain, bin_plain = make_node("plain", both[:1])
        node, bin_node = make_node("node", both[:1])
        node2, bin_node2 = make_node("node2", both)
        if ours:
            os.mkdir(cgroup)
        agent = lab.Agent(os.path.join(work, "agent"), bpf_root="/sys/fs/bpf/cilium-cni-bench-%s" % tag,
                          config=config, socket_lb=ours, prefix=nsenter(node_ours))
        agent.start()
        agent2 = lab.Agent(os.path.join(work, "agent2"), bpf_root="/sys/fs/bpf/cilium-cni-bench2-%s" % tag,
                           prefix=nsenter(node2))
        agent2.start()
        deadline = time.monotonic() + 60
        while ours and "connect4" not in lab.sh("bpftool", "cgroup", "show", cgroup).stdout:
            if time.monotonic() > deadline:  # the agent attaches them after its API is up
                raise RuntimeError("no socket hooks on %s: %s" % (cgroup, agent.log()))
            time.sleep(0.2)
        sides["ours"] = Side("ours", ptp("ours-" + tag, pods_ours, bin_ours, agent),
                             ("ip", "netns", "exec", node_ours.name), "10.217.%d.0/23" % (o + 4))
        sides["node"] = Side("node", ptp("node-" + tag, pods_node, bin_node),
                             ("ip", "netns", "exec", node.name), "10.217.%d.0/23" % (o + 6))
        sides["plain"] = Side("plain", ptp("plain-" + tag, pods_plain, bin_plain),
                              ("ip", "netns", "exec", node_plain.name), "10.217.%d.0/23" % (o + 8))
        sides["node2"] = Side("node2", ptp("node2-" + tag, pods_node2, bin_node2, agent2),
                              ("ip", "netns", "exec", node2.name), "10.217.%d.0/23" % (o + 10))
        for side in sides.values():
            side.add(namespaces)
            side.start_server()
        # an untranslated packet to a ClusterIP goes nowhere
        node_ours.run("ip", "route", "add", "unreachable", vip_ours + ".0.0/16")
        rules = KubeProxyRules(node, opts.iptables, cluster_cidr)
        rules2 = KubeProxyRules(node2, opts.iptables, cluster_cidr)
        vips = {"ours": vip_ours + ".200.1", "node": vip_node + ".200.1"}
        urls = {
            "direct": ("ours", "http://%s:%d/" % (sides["ours"].ip["server"], HTTP_PORT), cgroup),
            "direct, no programs": ("plain", "http://%s:%d/" % (sides["plain"].ip["server"],
                                                                HTTP_PORT), None),
            "cilium-cni socket LB": ("ours", "http://%s:%d/" % (vips["ours"], SERVICE_PORT),
                                     cgroup),
            "cilium-cni per-packet": ("ours", "http://%s:%d/" % (vips["ours"], SERVICE_PORT),
                                      None),
            "iptables": ("node", "http://%s:%d/" % (vips["node"], SERVICE_PORT), None),
            "iptables direct": ("node", "http://%s:%d/" % (sides["node"].ip["server"],
                                                           HTTP_PORT), None),
            IPT_PROGS: ("node2", "http://%s:%d/" % (vips["node"], SERVICE_PORT), None),
        }
        target_chain = kubeproxy.sep_chain(
            "%s/%s:%s" % TARGET, "tcp", "%s:%d" % (sides["node"].ip["server"], HTTP_PORT))
        target_chain2 = kubeproxy.sep_chain(
            "%s/%s:%s" % TARGET, "tcp", "%s:%d" % (sides["node2"].ip["server"], HTTP_PORT))

        for n in counts:
            node_svcs = services(n, vip_node, fillers) + [
                target_service(vips["node"], sides["node"].ip["server"])]
            restore_s = rules.load(node_svcs)
            restore2_s = rules2.load(services(n, vip_node, fillers) + [
                target_service(vips["node"], sides["node2"].ip["server"])])
            for r in (rules, rules2):
                got = len(r.rules("nat", "KUBE-SERVICES"))
                if got != 2 * n + 1:
                    raise RuntimeError("KUBE-SERVICES holds %d rules, not %d" % (got, 2 * n + 1))
            import_s = None
            if ours:
                path = os.path.join(work, "services.yaml")
                with open(path, "w") as f:
                    f.write(k8s_yaml(services(n, vip_ours, fillers) + [
                        target_service(vips["ours"], sides["ours"].ip["server"])]))
                t0 = time.perf_counter()
                cli(agent, "service", "import", path)
                import_s = time.perf_counter() - t0
                listed = json.loads(cli(agent, "service", "list", "-o", "json"))
                if len(listed) != n:
                    raise RuntimeError("cilium-cni lists %d services, not %d" % (len(listed), n))
            # Each path answers before it is timed.
            for config in configs:
                side, url, _ = urls[config]
                host, port = url.split("/")[2].split(":")
                body = sides[side].get(host, int(port))
                if body != "ok":
                    raise RuntimeError("%s: GET %s from the client: %r" % (config, url, body))
            notes[n] = (max(restore_s, restore2_s), import_s)
            print("[%5.0fs] %d services: %s-restore %.2f s%s" % (
                time.monotonic() - started, n, opts.iptables, restore_s,
                "" if import_s is None else ", cilium-cni service import %.1f s" % import_s),
                file=sys.stderr, flush=True)
            before = rules.dnat_packets(target_chain), rules2.dnat_packets(target_chain2)
            for rep in range(opts.reps):
                order = configs[rep % len(configs):] + configs[:rep % len(configs)]
                for config in order:
                    side, url, cg = urls[config]
                    for _attempt in range(3):  # a stalled request is reported, then retried
                        conntrack_room(nodes.values(), opts.requests)
                        p0, t0 = cpu_pressure(), time.monotonic()
                        r = sides[side].ab(url, opts.requests, cg, work)
                        p1, t1 = cpu_pressure(), time.monotonic()
                        if "stalled" not in r:
                            break
                        stalls.setdefault((config, n), []).append(r)
                        print("%s, %d services: no answer within 5 s after %d requests from %s"
                              % (config, n, r["stalled"], r["src"]), file=sys.stderr, flush=True)
                    else:
                        raise RuntimeError("%s: three runs stalled" % config)
                    r["psi"] = 0.0 if p0 is None else (p1 - p0) / 1e6 / (t1 - t0)
                    r["seconds"] = t1 - t0
                    samples[(config, n)].append(r)
            print("[%5.0fs] %d services measured" % (time.monotonic() - started, n),
                  file=sys.stderr, flush=True)
            # The iptables figures went through kube-proxy's DNAT for the measured service.
            for config, r, chain, b in (("iptables", rules, target_chain, before[0]),
                                        (IPT_PROGS, rules2, target_chain2, before[1])):
                dnat = r.dnat_packets(chain) - b
                if config in configs and dnat < opts.reps * opts.requests:
                    raise RuntimeError("%s: the measured service's KUBE-SEP DNAT saw %d new "
                                       "connections, fewer than the %d requests"
                                       % (config, dnat, opts.reps * opts.requests))
    finally:  # every step runs even if an earlier one fails, or another signal comes
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        for side in sides.values():
            tidy(side.stop_server)
        for r in (rules, rules2):
            if r is not None:
                tidy(r.remove)
        for side in sides.values():
            tidy(side.delete)
        for a in (agent, agent2):
            if a is not None:
                tidy(a.stop)
        if agent is not None and ours and os.path.isdir(cgroup):  # our hooks: on our cgroup
            from datapath import socklb
            tidy(socklb.uninstall, agent.bpf_root, cgroup)
        for a in (agent, agent2):
            if a is not None:
                tidy(a.cleanup)
        for ns in namespaces:
            tidy(ns.remove)
        if os.path.isdir(cgroup):
            tidy(os.rmdir, cgroup)
        tidy(lab.sh, "rm", "-rf", work)

    report(opts, counts, configs, samples, notes, time.monotonic() - started, stalls)


def report(opts, counts, configs, samples, notes, elapsed, stalls):
    version = lab.sh(opts.iptables, "-V").stdout.strip()
    print("%d sequential GETs per measurement (ab -c 1, a new connection each), %d repetitions; "
          "%.0f s in all; %s" % (opts.requests, opts.reps, elapsed, version))
    for n, (restore_s, import_s) in notes.items():
        print("%d services: iptables-restore %.2f s%s" % (
            n, restore_s, "" if import_s is None else
            "; cilium-cni service import %.1f s" % import_s))
    for (config, n), runs in stalls.items():
        print("%s, %d services: %d run(s) stopped by a request without an answer in 5 s "
              "(after %s requests), each run again from a fresh address" % (
                  config, n, len(runs), ", ".join(str(r["stalled"]) for r in runs)))
    th = opts.contended

    def rel(config, n, base):
        """Median over repetitions of (config / the same repetition's base)."""
        if base not in configs:
            return float("nan")
        return statistics.median(a["median"] / b["median"] for a, b in zip(
            samples[(config, n)], samples[(base, n)], strict=True))

    value, mean, p99, ratio, vs_ipt, vs_progs, busy = {}, {}, {}, {}, {}, {}, {}
    for n in counts:
        for config in configs:
            s = samples[(config, n)]
            value[(config, n)] = statistics.median(x["median"] for x in s)
            mean[(config, n)] = statistics.median(x["mean"] for x in s)
            p99[(config, n)] = statistics.median(x["p99"] for x in s)
            ratio[(config, n)] = rel(config, n, "direct")
            vs_ipt[(config, n)] = rel(config, n, "iptables")
            vs_progs[(config, n)] = rel(config, n, IPT_PROGS)
            busy[(config, n)] = sum(1 for x in s if x["psi"] > th)
    print()
    print("| configuration | services | median µs | mean µs | p99 µs | / direct | / iptables "
          "| / iptables + programs | contended |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in counts:
        for config in configs:
            print("| %s | %s | %.0f | %.0f | %.0f | %.3f | %.3f | %.3f | %d/%d |" % (
                config, "{:,}".format(n), value[(config, n)], mean[(config, n)],
                p99[(config, n)], ratio[(config, n)], vs_ipt[(config, n)],
                vs_progs[(config, n)], busy[(config, n)], len(samples[(config, n)])))
    lo, hi = counts[0], counts[-1]
    print()
    for config in configs:
        print("%-22s %6d -> %6d services: median %.0f -> %.0f µs (x%.3f); / direct %.3f -> %.3f"
              % (config, lo, hi, value[(config, lo)], value[(config, hi)],
                 value[(config, hi)] / value[(config, lo)], ratio[(config, lo)],
                 ratio[(config, hi)]))
    for config in (c for c in OURS if c in configs and "direct" in configs):
        grow = ratio[(config, hi)] / ratio[(config, lo)]
        print(target_line("%s at %d services within 5%% of itself at %d (ratios to direct, "
                          "same repetitions)" % (config, hi, lo), grow <= 1.05, "x%.3f" % grow))
    for base, vs in (("iptables", vs_ipt), (IPT_PROGS, vs_progs)):
        for config in (c for c in OURS if c in configs and base in configs):
            print(target_line(
                "%s at or below %s at every count (same repetitions)" % (config, base),
                all(vs[(config, n)] <= 1.0 for n in counts),
                " ".join("%d:%.3f" % (n, vs[(config, n)]) for n in counts)))
    if "cilium-cni socket LB" in configs and "direct" in configs:
        worst = max(ratio[("cilium-cni socket LB", n)] for n in counts)
        print(target_line("socket LB connect+request within 3% of direct at every count",
                          worst <= 1.03, "worst ratio %.3f" % worst))
    print("per measurement, in repetition order: median µs (CPU pressure share; ! = contended) "
          "and its wall time")
    for (config, n), s in samples.items():
        print("  %-22s %6d  %s" % (config, n, " ".join(
            "%.0f(%.2f)%s/%.1fs" % (x["median"], x["psi"], "!" if x["psi"] > th else "",
                                    x["seconds"]) for x in s)))
    if opts.plot:
        plot(opts.plot, counts, value, configs,
             PLOT_TITLE % (opts.requests, opts.reps, version))
        print("plot written to %s" % opts.plot)


if __name__ == "__main__":
    main()
