"""Fixtures for the kernel tests (the datapath's, and the policy and
services tests that run the programs): a pod netns joined to the host by a
veth pair, and a private bpffs root. Everything made is removed even on
failure (the netns and the host veth by name, the root with its pins).
tests/conftest.py makes them visible to every folder."""

import ipaddress
import json
import os
import random
import shutil
import subprocess
import sys
from dataclasses import dataclass

import pytest

from datapath import bpffs, bpfsys
from datapath.loader import Datapath
from tests import lab


@dataclass
class Pod:
    netns: lab.Netns
    path: str
    host_ifname: str
    pod_ifname: str
    host_ip: str
    pod_ip: str
    pod_cidrs: list  # what inspect_pod_interface should report

    def host_link(self):
        return json.loads(lab.sh("ip", "-j", "link", "show", self.host_ifname).stdout)[0]

    def pod_link(self):
        return json.loads(self.netns.run("ip", "-j", "link", "show", self.pod_ifname).stdout)[0]

    @property
    def host_ifindex(self):
        return self.host_link()["ifindex"]


def _random_net():
    # A random /30 (and /64) so that concurrent runs do not share routes.
    base = ipaddress.ip_address("10.200.0.0") + random.randrange(0, 2**18) * 4
    return ipaddress.ip_network(f"{base}/30"), random.randrange(1, 2**16)


@pytest.fixture
def pod(require_root):
    ns = lab.Netns()
    host_ifname = lab.unique("ccdph")
    try:
        net, tag = _random_net()
        host_ip, pod_ip = str(net[1]), str(net[2])
        pod_ip6 = f"fd00:ccd:{tag:x}::2"
        lab.sh("ip", "link", "add", host_ifname, "type", "veth", "peer", "name", "eth0", "netns", ns.name)
        lab.sh("ip", "addr", "add", f"{host_ip}/30", "dev", host_ifname)
        lab.sh("ip", "link", "set", host_ifname, "up")
        ns.run("ip", "addr", "add", f"{pod_ip}/30", "dev", "eth0")
        ns.run("ip", "addr", "add", f"{pod_ip6}/64", "dev", "eth0", "nodad")
        ns.run("ip", "link", "set", "eth0", "up")
        yield Pod(ns, ns.path, host_ifname, "eth0", host_ip, pod_ip, [f"{pod_ip}/30", f"{pod_ip6}/64"])
    finally:
        lab.sh("ip", "link", "del", host_ifname, check=False)
        ns.remove()


@pytest.fixture
def bpf_root(require_root):
    root = "/sys/fs/bpf/cilium-cni-test-%08x" % random.getrandbits(32)
    try:
        yield root
    finally:
        bpffs.remove_tree(root)


@pytest.fixture
def make_datapath(bpf_root):
    made = []

    def make(root=None, defines=None):
        dp = Datapath(root or bpf_root, defines=defines)
        made.append(dp)
        dp.load()
        return dp

    try:
        yield make
    finally:
        for dp in made:
            dp.close()


@pytest.fixture
def datapath(make_datapath):
    return make_datapath()


@pytest.fixture
def map_fd(bpf_root):
    """map_fd(name): an fd of the map pinned under the test's bpf root, for
    reading and writing raw entries (the same map whichever Datapath object
    of the test pinned it; closed after the test)."""
    fds = {}

    def get(name):
        if name not in fds:
            fds[name] = bpfsys.obj_get(f"{bpf_root}/maps/{name}")
        return fds[name]

    try:
        yield get
    finally:
        for fd in fds.values():
            os.close(fd)


@pytest.fixture(scope="session")
def ping():
    """A ping command; busybox's where iputils is not installed."""
    if shutil.which("ping"):
        return ["ping"]
    if shutil.which("busybox"):
        return ["busybox", "ping"]
    pytest.fail("no ping: install iputils-ping or busybox-static (scripts/setup)")


def tc_filters(dev, hook):
    return lab.sh("tc", "filter", "show", "dev", dev, hook).stdout


NETTOOL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nettool.py")


@dataclass
class BridgedPod:
    netns: lab.Netns
    host_ifname: str
    ip: str
    ip6: str

    @property
    def host_ifindex(self):
        return json.loads(lab.sh("ip", "-j", "link", "show", self.host_ifname).stdout)[0]["ifindex"]


@pytest.fixture
def bridged_pods(require_root):
    """make(n): n pods on one L2 segment, their host veths on a bridge, so
    pod-to-pod traffic crosses both pods' host veths (no routing needed)."""
    made_ns, made_links = [], []

    def make(count):
        bridge = lab.unique("ccdpbr")
        lab.sh("ip", "link", "add", bridge, "type", "bridge")
        made_links.append(bridge)
        lab.sh("ip", "link", "set", bridge, "up")
        net, tag = _random_net()
        base = ipaddress.ip_address(str(net[0]))
        pods = []
        for i in range(count):
            ns = lab.Netns()
            made_ns.append(ns)
            host = lab.unique("ccdpb")
            lab.sh("ip", "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", ns.name)
            made_links.append(host)
            lab.sh("ip", "link", "set", host, "master", bridge)
            lab.sh("ip", "link", "set", host, "up")
            # Only the pods route these (the bridge has no address), so
            # a /24 around the random base collides with nothing.
            ip, ip6 = str(base + 64 + i), f"fd00:ccd:{tag:x}::{i + 10:x}"
            ns.run("ip", "addr", "add", f"{ip}/24", "dev", "eth0")
            ns.run("ip", "addr", "add", f"{ip6}/64", "dev", "eth0", "nodad")
            ns.run("ip", "link", "set", "eth0", "up")
            pods.append(BridgedPod(ns, host, ip, ip6))
        return pods

    try:
        yield make
    finally:
        for link in reversed(made_links):
            lab.sh("ip", "link", "del", link, check=False)
        for ns in made_ns:
            ns.remove()


@pytest.fixture
def serve():
    """serve(netns_or_None, proto, *ports): an echo server until the test ends."""
    procs = []

    def start(ns, proto, *ports):
        cmd = [sys.executable, NETTOOL, "serve", proto, *map(str, ports)]
        if ns is not None:
            cmd = ["ip", "netns", "exec", ns.name, *cmd]
        # `ip netns exec` execs the command: the pid is the server's.
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        line = proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"echo server did not start: {line} {proc.stderr.read()}")
        return proc

    try:
        yield start
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(5)


def probe(ns, proto, host, port, sport=0, timeout=1.0):
    """True if an echo server at host:port answered, from netns `ns` (None: host)."""
    cmd = [sys.executable, NETTOOL, "probe", proto, host, str(port), "--timeout", str(timeout)]
    if sport:
        cmd += ["--sport", str(sport)]
    if ns is not None:
        cmd = ["ip", "netns", "exec", ns.name, *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 30).returncode == 0
