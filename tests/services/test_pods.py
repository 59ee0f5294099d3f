"""Services end to end: real pods on a bridge network, real TCP and UDP.

Per-packet path: the agent runs without socket hooks, a pod talks to a
ClusterIP and the tc program on its host veth translates. Socket path: the
agent attaches the cgroup hooks (only in these tests; detached by the
agent fixture's cleanup even when a test fails) and a host process talks
to the ClusterIP. Backends answer with their own name, so a client sees
which backend served it. Every service address gets a blackhole route on
the host for the test's duration: a packet that is not translated is
dropped on this machine, never sent anywhere.
"""

import json
import os
import random
import subprocess
import sys
import textwrap
import time

import pytest

from tests import lab
from tests.chaining.test_chain import pod_ip
from tests.lab import cli

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("require_root")]

SERVER = r"""
import socket, sys, threading
name, proto, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
family = socket.AF_INET6 if len(sys.argv) > 4 else socket.AF_INET
addr = '::' if family == socket.AF_INET6 else '0.0.0.0'
if proto == 'tcp':
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port)); s.listen(128)
    def serve(c, peer):
        with c:
            while True:
                data = c.recv(100)
                if not data:
                    return
                c.sendall(name.encode() + b':' + data + b'|' + peer[0].encode())
    print('ready', flush=True)
    while True:
        c, peer = s.accept()
        threading.Thread(target=serve, args=(c, peer), daemon=True).start()
else:
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.bind((addr, port))
    print('ready', flush=True)
    while True:
        data, peer = s.recvfrom(100)
        s.sendto(name.encode() + b':' + data + b'|' + peer[0].encode(), peer)
"""

CLIENT = r"""
import errno, json, socket, sys, time
mode, host, port, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
family = socket.AF_INET6 if ':' in host else socket.AF_INET
out = {'ok': 0, 'names': {}, 'peers': [], 'seen': [], 'errors': {}, 'seconds': []}
for i in range(count):
    t0 = time.monotonic()
    s = socket.socket(family, socket.SOCK_STREAM if mode == 'tcp' else socket.SOCK_DGRAM)
    s.settimeout(2.0)
    try:
        if mode == 'tcp':
            s.connect((host, port)); s.sendall(b'q%d' % i); data = s.recv(100); peer = s.getpeername()
        elif mode == 'udp-connected':
            s.connect((host, port)); s.send(b'q%d' % i); data = s.recv(100); peer = s.getpeername()
        else:
            s.sendto(b'q%d' % i, (host, port)); data, peer = s.recvfrom(100)
        name, _, rest = data.decode().partition(':')
        echo, _, seen = rest.partition('|')  # the client address the backend saw
        assert echo == 'q%d' % i, data
        if seen not in out['seen']:
            out['seen'].append(seen)
        out['ok'] += 1
        out['names'][name] = out['names'].get(name, 0) + 1
        p = '%s:%d' % (peer[0], peer[1])
        if p not in out['peers']:
            out['peers'].append(p)
    except OSError as e:
        key = errno.errorcode.get(e.errno, 'timeout' if isinstance(e, socket.timeout) else str(e))
        out['errors'][key] = out['errors'].get(key, 0) + 1
    out['seconds'].append(round(time.monotonic() - t0, 3))
    s.close()
print(json.dumps(out))
"""

# One persistent TCP connection: a reply per line on stdin.
HOLDER = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.settimeout(3.0)
s.connect((sys.argv[1], int(sys.argv[2])))
for line in sys.stdin:
    try:
        s.sendall(line.strip().encode())
        print(s.recv(100).decode().partition('|')[0], flush=True)
    except OSError as e:
        print('error:%s' % e, flush=True)
"""


def client(ns, mode, host, port, count=1):
    cmd = [sys.executable, "-c", CLIENT, mode, host, str(port), str(count)]
    if ns is not None:
        cmd = ["ip", "netns", "exec", ns.name, *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60 + 3 * count)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


class World:
    """Pods on one bridge network, named servers, service addresses."""

    def __init__(self, agent, net, pods):
        self.agent, self.net, self._pods = agent, net, pods
        self.ns, self.ip, self.procs, self.routes = {}, {}, [], []

    def pod(self, name, **labels):
        ns = self._pods()
        result = self.net.chain.add(name, ns.path, labels=labels or None,
                                    cni_args="K8S_POD_NAMESPACE=default;K8S_POD_NAME=%s" % name)
        self.ns[name], self.ip[name] = ns, pod_ip(result)
        return ns

    def serve(self, name, proto, port, ipv6=False):
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns[name].name, sys.executable, "-c",
                                 SERVER, name, proto, str(port), *(["v6"] if ipv6 else [])],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.procs.append(proc)
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()

    def vip(self):
        """A service address no one else uses, blackholed on the host."""
        address = "10.%d.%d.%d" % (random.randrange(96, 100), random.randrange(256),
                                   random.randrange(1, 255))
        lab.sh("ip", "route", "add", "blackhole", address + "/32")
        self.routes.append(address)
        return address

    def vip6(self):
        address = "fd00:96:%x::%x" % (random.randrange(2**16), random.randrange(1, 2**16))
        lab.sh("ip", "-6", "route", "add", "blackhole", address + "/128")
        self.routes.append(address)
        return address

    def ip6(self, name):
        ep = self.agent.api("GET", "/v1/endpoints/%s:eth0" % name)[1]
        return [a.split("/")[0] for a in ep["interface"]["addresses"] if ":" in a][0]

    def cleanup(self):
        for proc in self.procs:
            proc.kill()
            proc.wait(5)
        for address in self.routes:
            lab.sh("ip", "route", "del", "blackhole", address + ("/128" if ":" in address else "/32"),
                   check=False)


@pytest.fixture
def make_world(make_network, pods):
    made = []

    def make(agent, ipv6=False):
        w = World(agent, make_network(agent, ipv6=ipv6), pods)
        made.append(w)
        return w

    yield make
    for w in made:
        w.cleanup()


def backends(world, names, port):
    return ",".join("%s:%d" % (world.ip[n], port) for n in names)


# -- per-packet path (tc on the pod's host veth) ------------------------------


def test_clusterip_from_a_pod_tcp_udp_spread_and_reverse_nat(make_agent, make_world):
    agent = make_agent()
    w = make_world(agent)
    w.pod("client")
    for name in ("web1", "web2", "web3"):
        w.pod(name)
        w.serve(name, "tcp", 8080)
        w.serve(name, "udp", 5353)
    vip = w.vip()
    cli(agent, "service", "update", "--frontend", "%s:80" % vip,
        "--backends", backends(w, ["web1", "web2", "web3"], 8080))
    cli(agent, "service", "update", "--frontend", "%s:53/udp" % vip,
        "--backends", backends(w, ["web1", "web2", "web3"], 5353))
    tcp = client(w.ns["client"], "tcp", vip, 80, count=60)
    assert tcp["ok"] == 60, tcp
    # the application sees the service address as its peer
    assert tcp["peers"] == ["%s:80" % vip]
    # spread: with 60 connections each of 3 backends gets some (p(miss) < 1e-10)
    assert set(tcp["names"]) == {"web1", "web2", "web3"}, tcp["names"]
    udp = client(w.ns["client"], "udp", vip, 53, count=30)
    assert udp["ok"] == 30 and udp["peers"] == ["%s:53" % vip], udp
    assert len(udp["names"]) >= 2, udp["names"]  # each datagram is a new flow (new source port)
    connected = client(w.ns["client"], "udp-connected", vip, 53, count=5)
    assert connected["ok"] == 5 and connected["peers"] == ["%s:53" % vip], connected
    lb = json.loads(cli(agent, "bpf", "lb", "list", "-o", "json").stdout)
    entry = [e for e in lb if e["frontend"] == "%s:80/tcp" % vip][0]
    assert sorted(entry["backends"]) == sorted(backends(w, ["web1", "web2", "web3"], 8080).split(","))


def test_monitor_shows_translations_when_asked(make_agent, make_world):
    agent = make_agent()
    w = make_world(agent)
    w.pod("client")
    w.pod("web")
    w.serve("web", "tcp", 8080)
    vip = w.vip()
    cli(agent, "service", "update", "--frontend", "%s:80" % vip, "--backends", backends(w, ["web"], 8080))
    monitor = subprocess.Popen([lab.PLUGIN_BIN, "monitor", "--type", "lb", "-o", "json",
                                "--socket", agent.socket], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        assert "listening" in monitor.stderr.readline()
        time.sleep(0.5)
        assert client(w.ns["client"], "tcp", vip, 80)["ok"] == 1
        event = json.loads(monitor.stdout.readline())
    finally:
        monitor.kill()
        monitor.wait(5)
    assert event["type"] == "lb"
    assert (event["frontend"], event["frontendPort"]) == (vip, 80)
    assert (event["backend"], event["backendPort"]) == (w.ip["web"], 8080)
    assert event["src"] == w.ip["client"]


def test_backend_removed_while_others_continue_then_service_deleted(make_agent, make_world):
    agent = make_agent()
    w = make_world(agent)
    w.pod("client")
    for name in ("web1", "web2"):
        w.pod(name)
        w.serve(name, "tcp", 8080)
    vip = w.vip()
    cli(agent, "service", "update", "--frontend", "%s:80" % vip,
        "--backends", backends(w, ["web1", "web2"], 8080))
    holders = []
    try:
        # established connections until both backends hold one
        seen = {}
        for _ in range(40):
            h = subprocess.Popen(["ip", "netns", "exec", w.ns["client"].name, sys.executable, "-c",
                                  HOLDER, vip, "80"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True)
            holders.append(h)
            h.stdin.write("a\n")
            h.stdin.flush()
            name = h.stdout.readline().strip().partition(":")[0]
            seen.setdefault(name, h)
            if len(seen) == 2:
                break
        assert set(seen) == {"web1", "web2"}
        # web2 leaves the service: web1's connection goes on, new ones go to web1
        cli(agent, "service", "update", "--frontend", "%s:80" % vip,
            "--backends", backends(w, ["web1"], 8080))
        seen["web1"].stdin.write("b\n")
        seen["web1"].stdin.flush()
        assert seen["web1"].stdout.readline().strip() == "web1:b"
        after = client(w.ns["client"], "tcp", vip, 80, count=10)
        assert after["names"] == {"web1": 10}, after
        # a new backend joins; the established connection to web1 still stays
        cli(agent, "service", "update", "--frontend", "%s:80" % vip,
            "--backends", backends(w, ["web1", "web2"], 8080))
        seen["web1"].stdin.write("c\n")
        seen["web1"].stdin.flush()
        assert seen["web1"].stdout.readline().strip() == "web1:c"
    finally:
        for h in holders:
            h.kill()
            h.wait(5)
    cli(agent, "service", "delete", "--frontend", "%s:80" % vip)
    assert json.loads(cli(agent, "bpf", "lb", "list", "-o", "json").stdout) == []
    gone = client(w.ns["client"], "tcp", vip, 80)
    assert gone["ok"] == 0


def test_no_backend_service_is_refused_at_once_from_a_pod(make_agent, make_world):
    agent = make_agent()
    w = make_world(agent)
    w.pod("client")
    vip = w.vip()
    cli(agent, "service", "update", "--frontend", "%s:80" % vip, "--backends", "")
    out = client(w.ns["client"], "tcp", vip, 80)
    assert out["ok"] == 0
    # per packet: the SYN gets a RST back, the client sees "connection refused"
    assert out["errors"] == {"ECONNREFUSED": 1}, out
    assert out["seconds"][0] < 1.0
    ep = agent.api("GET", "/v1/endpoints/client:eth0")[1]
    assert ep["stats"]["egress"]["drops"]["no-service-backend"] >= 1


def test_policy_applies_to_the_backend_identity(make_agent, make_world, tmp_path):
    agent = make_agent()
    w = make_world(agent)
    w.pod("client", app="client")
    w.pod("a", app="a")
    w.pod("b", app="b")
    w.serve("a", "tcp", 8080)
    w.serve("b", "tcp", 8080)
    vip_a, vip_b = w.vip(), w.vip()
    cli(agent, "service", "update", "--frontend", "%s:80" % vip_a, "--backends", backends(w, ["a"], 8080))
    cli(agent, "service", "update", "--frontend", "%s:80" % vip_b, "--backends", backends(w, ["b"], 8080))
    assert client(w.ns["client"], "tcp", vip_b, 80)["ok"] == 1
    policy = tmp_path / "egress.yaml"
    # the client may only talk to pods labelled app=a (the service address
    # itself is world: were policy applied before translation, both fail)
    policy.write_text(textwrap.dedent("""
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: client-to-a}
        spec:
          endpointSelector: {matchLabels: {app: client}}
          egress:
          - toEndpoints: [{matchLabels: {app: a}}]
    """))
    cli(agent, "policy", "import", str(policy))
    assert client(w.ns["client"], "tcp", vip_a, 80)["names"] == {"a": 1}
    assert client(w.ns["client"], "tcp", vip_b, 80)["ok"] == 0
    ep = agent.api("GET", "/v1/endpoints/client:eth0")[1]
    assert ep["stats"]["egress"]["drops"]["policy-denied"] >= 1


@pytest.mark.parametrize("socket_lb", [False, True], ids=["per-packet", "socket"])
def test_ipv6_clusterip_tcp_and_udp(make_agent, make_world, socket_lb):
    agent = make_agent(socket_lb=socket_lb)
    w = make_world(agent, ipv6=True)
    src = None if socket_lb else w.pod("client")
    for name in ("web1", "web2"):
        w.pod(name)
        w.serve(name, "tcp", 8080, ipv6=True)
        w.serve(name, "udp", 5353, ipv6=True)
    for name in ("web1", "web2"):  # until duplicate address detection is done
        deadline = time.monotonic() + 10
        while client(src, "tcp", w.ip6(name), 8080)["ok"] != 1 and time.monotonic() < deadline:
            time.sleep(0.2)
    vip = w.vip6()
    v6_backends = ",".join("[%s]:%%d" % w.ip6(n) for n in ("web1", "web2"))
    cli(agent, "service", "update", "--frontend", "[%s]:80" % vip, "--backends", v6_backends % (8080, 8080))
    cli(agent, "service", "update", "--frontend", "[%s]:53/udp" % vip, "--backends", v6_backends % (5353, 5353))
    # the pod reaches the service through its gateway, whose IPv6 address
    # may still be tentative (DAD on the bridge) for a second or two
    deadline = time.monotonic() + 10
    while client(src, "tcp", vip, 80)["ok"] != 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    tcp = client(src, "tcp", vip, 80, count=30)
    assert tcp["ok"] == 30 and tcp["peers"] == ["%s:80" % vip], (tcp["errors"], tcp)
    assert set(tcp["names"]) == {"web1", "web2"}
    udp = client(src, "udp", vip, 53, count=20)
    assert udp["ok"] == 20 and udp["peers"] == ["%s:53" % vip], udp
    connected = client(src, "udp-connected", vip, 53, count=5)
    assert connected["ok"] == 5 and connected["peers"] == ["%s:53" % vip], connected


# -- NodePort ----------------------------------------------------------------


@pytest.fixture
def outside(pods):
    """A netns standing in for a remote client, linked to the host by a veth."""
    ns = pods()
    host_if = lab.unique("ccnp")
    base = random.randrange(0, 2**14) * 4
    net = "10.%d.%d" % (200 + (base >> 16) % 8, (base >> 8) & 0xFF)
    host_ip, client_ip = "%s.%d" % (net, (base & 0xFF) + 1), "%s.%d" % (net, (base & 0xFF) + 2)
    lab.sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns.name)
    try:
        lab.sh("ip", "addr", "add", host_ip + "/30", "dev", host_if)
        lab.sh("ip", "link", "set", host_if, "up")
        ns.run("ip", "addr", "add", client_ip + "/30", "dev", "eth0")
        ns.run("ip", "link", "set", "eth0", "up")
        yield ns, host_if, host_ip, client_ip
    finally:
        lab.sh("ip", "link", "del", host_if, check=False)


def test_nodeport_from_an_outside_namespace(make_agent, make_world, outside, tmp_path):
    ns, host_if, host_ip, client_ip = outside
    config = tmp_path / "agent.yaml"
    config.write_text("nodeport-devices: [%s]\n" % host_if)
    agent = make_agent(config=str(config))
    w = make_world(agent)
    for name in ("web1", "web2"):
        w.pod(name)
        w.serve(name, "tcp", 8080)
        w.serve(name, "udp", 5353)
    port = random.randrange(30000, 32768)
    # a NodePort on every node address (as imported from Kubernetes) ...
    cli(agent, "service", "update", "--type", "NodePort", "--frontend", "0.0.0.0:%d" % port,
        "--backends", backends(w, ["web1", "web2"], 8080))
    # ... and one on the node address given explicitly
    cli(agent, "service", "update", "--type", "NodePort", "--frontend", "%s:%d/udp" % (host_ip, port),
        "--backends", backends(w, ["web1", "web2"], 5353))
    tcp = client(ns, "tcp", host_ip, port, count=30)
    assert tcp["ok"] == 30 and tcp["peers"] == ["%s:%d" % (host_ip, port)], tcp
    assert set(tcp["names"]) == {"web1", "web2"}
    udp = client(ns, "udp", host_ip, port, count=10)
    assert udp["ok"] == 10 and udp["peers"] == ["%s:%d" % (host_ip, port)], udp
    # local backends see the real client (no SNAT)
    assert tcp["seen"] == [client_ip] and udp["seen"] == [client_ip]
    nodeports = [e for e in json.loads(cli(agent, "bpf", "lb", "list", "-o", "json").stdout)
                 if e["type"] == "NodePort"]
    assert len(nodeports) == 2
    assert client(ns, "tcp", host_ip, port + 1 if port < 32767 else port - 1)["ok"] == 0


@pytest.fixture
def lan(pods):
    """A LAN on a host bridge (with a node address): a client netns and a
    second "node" netns on it, as a remote client and a remote backend see
    a node."""
    bridge = lab.unique("cclan")
    net = "10.221.%d" % random.randrange(256)
    links = [bridge]
    try:
        lab.sh("ip", "link", "add", bridge, "type", "bridge")
        lab.sh("ip", "addr", "add", net + ".1/24", "dev", bridge)
        lab.sh("ip", "link", "set", bridge, "up")
        hosts = []
        for i in (2, 3):
            ns, port = pods(), lab.unique("cclp")
            lab.sh("ip", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns.name)
            links.append(port)
            lab.sh("ip", "link", "set", port, "master", bridge)
            lab.sh("ip", "link", "set", port, "up")
            ns.run("ip", "addr", "add", "%s.%d/24" % (net, i), "dev", "eth0")
            ns.run("ip", "link", "set", "eth0", "up")
            hosts.append((ns, "%s.%d" % (net, i)))
        yield bridge, net + ".1", hosts[0], hosts[1]
    finally:
        for link in reversed(links):
            lab.sh("ip", "link", "del", link, check=False)


def test_nodeport_to_a_backend_on_another_node_is_snatted(make_agent, make_world, lan, tmp_path):
    bridge, node_ip, (client_ns, client_ip), (node2, node2_ip) = lan
    config = tmp_path / "agent.yaml"
    config.write_text("nodeport-devices: [%s]\n" % bridge)
    agent = make_agent(config=str(config))
    w = make_world(agent)
    w.ns["remote"] = node2
    w.serve("remote", "tcp", 8080)
    w.serve("remote", "udp", 5353)
    w.pod("local")
    w.serve("local", "tcp", 8080)
    port = random.randrange(30000, 32767)
    cli(agent, "service", "update", "--type", "NodePort", "--frontend", "0.0.0.0:%d" % port,
        "--backends", "%s:8080" % node2_ip)
    cli(agent, "service", "update", "--type", "NodePort", "--frontend", "%s:%d/udp" % (node_ip, port),
        "--backends", "%s:5353" % node2_ip)
    tcp = client(client_ns, "tcp", node_ip, port, count=10)
    # the remote backend saw the node (SNAT), so its replies came back
    # through the node and the client saw the node port answer
    assert tcp["ok"] == 10 and tcp["peers"] == ["%s:%d" % (node_ip, port)], tcp
    assert tcp["names"] == {"remote": 10} and tcp["seen"] == [node_ip], tcp
    udp = client(client_ns, "udp", node_ip, port, count=5)
    assert udp["ok"] == 5 and udp["peers"] == ["%s:%d" % (node_ip, port)] and udp["seen"] == [node_ip], udp
    # a local backend in the same service: no SNAT for it
    cli(agent, "service", "update", "--type", "NodePort", "--frontend", "0.0.0.0:%d" % port,
        "--backends", "%s:8080" % w.ip["local"])
    local = client(client_ns, "tcp", node_ip, port, count=3)
    assert local["names"] == {"local": 3} and local["seen"] == [client_ip], local


# -- socket path (cgroup hooks) -------------------------------------------------


def test_clusterip_from_a_host_process_socket_path(make_agent, make_world):
    agent = make_agent(socket_lb=True)
    hooks = lab.sh("bpftool", "cgroup", "show", "/sys/fs/cgroup/unified").stdout
    assert "sock_connect4" in hooks and "sock_recvmsg4" in hooks and "sock_getpeername6" in hooks
    w = make_world(agent)
    for name in ("web1", "web2"):
        w.pod(name)
        w.serve(name, "tcp", 8080)
        w.serve(name, "udp", 5353)
    vip = w.vip()
    cli(agent, "service", "update", "--frontend", "%s:80" % vip, "--backends", backends(w, ["web1", "web2"], 8080))
    cli(agent, "service", "update", "--frontend", "%s:53/udp" % vip,
        "--backends", backends(w, ["web1", "web2"], 5353))
    monitor = subprocess.Popen([lab.PLUGIN_BIN, "monitor", "--type", "lb", "--socket", agent.socket],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "listening" in monitor.stderr.readline()
        time.sleep(0.5)
        tcp = client(None, "tcp", vip, 80, count=40)
        line = monitor.stdout.readline()
    finally:
        monitor.kill()
        monitor.wait(5)
    assert " LB socket pid " in line and "%s:80 translated to" % vip in line, line
    assert tcp["ok"] == 40 and tcp["peers"] == ["%s:80" % vip], tcp  # getpeername: the frontend
    assert set(tcp["names"]) == {"web1", "web2"}
    udp = client(None, "udp", vip, 53, count=20)  # sendmsg + recvmsg
    assert udp["ok"] == 20 and udp["peers"] == ["%s:53" % vip], udp
    assert set(udp["names"]) == {"web1", "web2"}
    connected = client(None, "udp-connected", vip, 53, count=5)
    assert connected["ok"] == 5 and connected["peers"] == ["%s:53" % vip], connected
    # a frontend without backends: connect() fails at once
    empty = w.vip()
    for proto in ("tcp", "udp"):
        cli(agent, "service", "update", "--frontend", "%s:80/%s" % (empty, proto), "--backends", "",
            "--name", "default/empty")
    refused = client(None, "tcp", empty, 80)
    assert refused["errors"] == {"ECONNREFUSED": 1} and refused["seconds"][0] < 0.5, refused
    refused = client(None, "udp", empty, 80)  # unconnected UDP: sendto() fails
    assert refused["errors"] == {"ECONNREFUSED": 1}, refused
    refused = client(None, "udp-connected", empty, 80)
    assert refused["errors"] == {"ECONNREFUSED": 1}, refused


def test_agent_restart_keeps_services_working(make_agent, make_world):
    agent = make_agent(socket_lb=True)
    w = make_world(agent)
    w.pod("client")
    for name in ("web1", "web2"):
        w.pod(name)
        w.serve(name, "tcp", 8080)
    vip = w.vip()
    cli(agent, "service", "update", "--frontend", "%s:80" % vip, "--backends", backends(w, ["web1", "web2"], 8080))
    before = json.loads(cli(agent, "bpf", "lb", "list", "-o", "json").stdout)
    agent.stop()
    # while the agent is down: programs stay attached, maps pinned
    assert client(None, "tcp", vip, 80, count=5)["ok"] == 5
    assert client(w.ns["client"], "tcp", vip, 80, count=5)["ok"] == 5
    agent.start()
    assert json.loads(cli(agent, "bpf", "lb", "list", "-o", "json").stdout) == before
    listed = json.loads(cli(agent, "service", "list", "-o", "json").stdout)
    assert [s["key"] for s in listed] == ["%s:80/tcp" % vip]
    # one set of socket programs (the restarted agent replaced its own)
    hooks = lab.sh("bpftool", "cgroup", "show", "/sys/fs/cgroup/unified").stdout
    pinned = lab.sh("bpftool", "prog", "show", "pinned", agent.bpf_root + "/progs/sock_connect4").stdout
    prog_id = pinned.split(":")[0]
    assert sum(1 for line in hooks.splitlines() if line.split()[:1] == [prog_id]) == 1
    assert client(None, "tcp", vip, 80, count=10)["ok"] == 10
    assert client(w.ns["client"], "tcp", vip, 80, count=10)["ok"] == 10
    cli(agent, "service", "update", "--frontend", "%s:80" % vip, "--backends", backends(w, ["web2"], 8080))
    assert client(None, "tcp", vip, 80, count=5)["names"] == {"web2": 5}


def test_bad_input_is_refused_with_a_message(agent):
    bad = cli(agent, "service", "update", "--frontend", "10.96.0.1:70000", "--backends", "10.1.0.1:80",
              check=False)
    assert bad.returncode != 0 and "port must be 1-65535" in bad.stderr
    bad = cli(agent, "service", "update", "--frontend", "10.96.0.1:80", "--backends", "10.1.0.x:80",
              check=False)
    assert bad.returncode != 0 and "'10.1.0.x' is not an IP address" in bad.stderr
    assert json.loads(cli(agent, "service", "list", "-o", "json").stdout) == []


def test_import_kubernetes_yaml(agent, tmp_path):
    (tmp_path / "svc.yaml").write_text(textwrap.dedent("""
        apiVersion: v1
        kind: Service
        metadata: {name: web, namespace: shop}
        spec:
          clusterIP: 10.96.7.7
          ports: [{name: http, port: 80, protocol: TCP}]
        ---
        apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
        addressType: IPv4
        ports: [{name: http, port: 8080, protocol: TCP}]
        endpoints:
        - addresses: [10.1.0.2, 10.1.0.3]
    """))
    out = cli(agent, "service", "import", str(tmp_path / "svc.yaml"))
    assert "imported 1 frontend(s) of 1 service(s)" in out.stdout
    lb = json.loads(cli(agent, "bpf", "lb", "list", "-o", "json").stdout)
    assert lb[0]["frontend"] == "10.96.7.7:80/tcp"
    assert sorted(lb[0]["backends"]) == ["10.1.0.2:8080", "10.1.0.3:8080"]
    os.unlink(tmp_path / "svc.yaml")


@pytest.fixture
def bpf_root():
    root = "/sys/fs/bpf/%s" % lab.unique("cilium-cni-test-")
    yield root
    lab.Agent("/nonexistent", root).cleanup()  # never started: removes the bpf root


def test_agent_refuses_a_missing_nodeport_device(tmp_path, bpf_root):
    config = tmp_path / "agent.yaml"
    missing = lab.unique("ccnone")
    config.write_text("nodeport-devices: [%s]\n" % missing)
    proc = subprocess.run([lab.PLUGIN_BIN, "agent", "--config", str(config), "--no-socket-lb",
                           "--socket", str(tmp_path / "a.sock"), "--state-dir", str(tmp_path / "state"),
                           "--bpf-root", bpf_root, "--log-file", str(tmp_path / "agent.log"),
                           "--metrics-address", ""], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip() == ("Error: cannot start the datapath: nodeport device '%s' does not exist"
                                   % missing)
