"""Identity-based policy end to end: pods chained after bridge, real packets.

Pods get labels through the netconf args convention; policy is imported
with the CLI; verdicts are observed with real TCP/UDP/ICMP traffic.
"""

import json
import os
import socket
import subprocess
import textwrap
import threading
import time

import pytest

from tests import lab
from tests.chaining.test_chain import pod_ip
from tests.lab import cli

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("require_root")]


def import_policy(agent, tmp_path, text, name="policy.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    cli(agent, "policy", "import", str(path))
    return path


class Pods:
    """Labelled pods on one bridge network, with echo servers to probe."""

    def __init__(self, agent, net, pods):
        self.agent, self.net, self._pods = agent, net, pods
        self.ns, self.ip, self.servers = {}, {}, []

    def add(self, name, namespace="default", **labels):
        ns = self._pods()
        result = self.net.chain.add(name, ns.path, labels=labels,
                                    cni_args="K8S_POD_NAMESPACE=%s;K8S_POD_NAME=%s"
                                    % (namespace, name))
        self.ns[name], self.ip[name] = ns, pod_ip(result)
        return ns

    def serve(self, name, proto, *ports):
        for port in ports:
            self.servers.append(lab.EchoServer(self.ns[name], proto, port))

    def talks(self, src, dst, port=8080, proto="tcp"):
        return lab.talks(self.ns[src], proto, self.ip[dst], port)

    def pings(self, src, dst_ip):
        return self.ns[src].run("ping", "-c", "1", "-W", "1", dst_ip, check=False).returncode == 0

    def endpoint(self, name):
        return self.agent.api("GET", "/v1/endpoints/%s:eth0" % name)[1]

    def stop(self):
        for s in self.servers:
            s.stop()


@pytest.fixture
def world(agent, make_network, pods):
    w = Pods(agent, make_network(agent), pods)
    yield w
    w.stop()


WEB_FROM_CLIENT = """
    apiVersion: cilium.io/v2
    kind: CiliumNetworkPolicy
    metadata: {name: web-from-client, namespace: default}
    spec:
      endpointSelector: {matchLabels: {app: web}}
      ingress:
      - fromEndpoints: [{matchLabels: {app: client}}]
"""


def test_l3_allow_by_labels_and_default_deny(world, agent, tmp_path):
    world.add("web", app="web")
    world.add("client", app="client")
    world.add("other", app="other")
    world.serve("web", "tcp", 8080)
    world.serve("other", "tcp", 8080)
    assert world.talks("other", "web")  # no policy yet: all allowed
    import_policy(agent, tmp_path, WEB_FROM_CLIENT)
    assert world.talks("client", "web")
    assert not world.talks("other", "web")
    assert not world.pings("other", world.ip["web"])
    # ARP passes under enforcement: forget the neighbour and talk again
    world.ns["client"].run("ip", "neigh", "flush", "all")
    assert world.talks("client", "web")
    assert world.talks("web", "other")  # web's egress is not enforced
    assert world.talks("client", "other")  # other is selected by nothing
    stats = world.endpoint("web")["stats"]["ingress"]
    assert stats["drops"].get("policy-denied", 0) >= 1
    # The datapath holds the entry: ingress allow from client's identity.
    out = json.loads(cli(agent, "bpf", "policy", "get", "web:eth0", "-o", "json").stdout)
    client_id = world.endpoint("client")["identity"]
    assert out["enforced"] == {"ingress": True, "egress": False}
    assert any(e["identity"] == client_id and e["direction"] == "ingress" and not e["deny"]
               for e in out["entries"])


def test_ipv6_is_enforced_too(agent, make_network, pods, tmp_path):
    world = Pods(agent, make_network(agent, ipv6=True), pods)
    try:
        for name, app in (("web", "web"), ("client", "client"), ("other", "other")):
            world.add(name, app=app)
        v6 = {n: [a.split("/")[0] for a in world.endpoint(n)["interface"]["addresses"]
                  if ":" in a][0] for n in ("web", "client", "other")}
        world.servers.append(lab.EchoServer(world.ns["web"], "tcp", 8080, "::"))
        wait_for(lambda: lab.talks(world.ns["client"], "tcp", v6["web"], 8080))  # DAD
        import_policy(agent, tmp_path, WEB_FROM_CLIENT)
        assert lab.talks(world.ns["client"], "tcp", v6["web"], 8080)
        assert not lab.talks(world.ns["other"], "tcp", v6["web"], 8080)
        # neighbour discovery still works under enforcement: a fresh neighbour entry
        world.ns["client"].run("ip", "-6", "neigh", "flush", "all")
        assert lab.talks(world.ns["client"], "tcp", v6["web"], 8080)
    finally:
        world.stop()


def test_policy_delete_restores_traffic(world, agent, tmp_path):
    world.add("web", app="web")
    world.add("other", app="other")
    world.serve("web", "tcp", 8080)
    import_policy(agent, tmp_path, WEB_FROM_CLIENT)
    assert not world.talks("other", "web")
    cli(agent, "policy", "delete", "web-from-client", "--namespace", "default")
    assert json.loads(cli(agent, "policy", "get", "-o", "json").stdout)["rules"] == []
    assert world.talks("other", "web")


def test_l4_ports_tcp_udp_and_ranges(world, agent, tmp_path):
    world.add("web", app="web")
    world.add("client", app="client")
    world.serve("web", "tcp", 8080, 9090, 8050, 8200)
    world.serve("web", "udp", 5353, 5354)
    import_policy(agent, tmp_path, """
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: web-ports}
        spec:
          endpointSelector: {matchLabels: {app: web}}
          ingress:
          - fromEndpoints: [{matchLabels: {app: client}}]
            toPorts:
            - ports:
              - {port: "8080", protocol: TCP}
              - {port: "5353", protocol: UDP}
              - {port: "8000", endPort: 8100, protocol: TCP}
    """)
    assert world.talks("client", "web", 8080)
    assert not world.talks("client", "web", 9090)
    assert world.talks("client", "web", 5353, "udp")
    assert not world.talks("client", "web", 5354, "udp")
    assert world.talks("client", "web", 8050)
    assert not world.talks("client", "web", 8200)


def test_deny_wins_over_allow(world, agent, tmp_path):
    world.add("web", app="web")
    world.add("client", app="client")
    world.serve("web", "tcp", 8080, 9090)
    import_policy(agent, tmp_path, """
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: web-deny}
        spec:
          endpointSelector: {matchLabels: {app: web}}
          ingress:
          - fromEndpoints: [{matchLabels: {app: client}}]
          ingressDeny:
          - fromEndpoints: [{matchLabels: {app: client}}]
            toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
    """)
    assert not world.talks("client", "web", 8080)
    assert world.talks("client", "web", 9090)
    assert world.endpoint("web")["stats"]["ingress"]["drops"].get("policy-deny", 0) >= 1


def test_replies_of_allowed_connections_pass_both_ways(world, agent, tmp_path):
    world.add("web", app="web")
    world.add("client", app="client")
    world.serve("web", "tcp", 8080)
    world.serve("web", "udp", 5353)
    # client: egress only to web; ingress enforced with nothing allowed.
    # web: ingress from client; egress enforced with nothing allowed.
    import_policy(agent, tmp_path, """
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: client}
        specs:
        - endpointSelector: {matchLabels: {app: client}}
          egress: [{toEndpoints: [{matchLabels: {app: web}}]}]
          ingress: []
        - endpointSelector: {matchLabels: {app: web}}
          ingress: [{fromEndpoints: [{matchLabels: {app: client}}]}]
          egress: []
    """)
    assert world.talks("client", "web", 8080)
    assert world.talks("client", "web", 5353, "udp")
    assert world.pings("client", world.ip["web"])
    world.serve("client", "tcp", 8080)
    assert not world.talks("web", "client", 8080)  # a new connection the other way


def test_label_change_moves_identity_and_enforcement_follows(world, agent, tmp_path):
    world.add("web", app="web")
    world.add("other", app="other")
    world.serve("web", "tcp", 8080)
    import_policy(agent, tmp_path, WEB_FROM_CLIENT)
    before = world.endpoint("other")["identity"]
    assert not world.talks("other", "web")
    cli(agent, "endpoint", "labels", "other:eth0", "--add", "app=client")
    after = world.endpoint("other")
    assert after["identity"] != before and "cni:app=client" in after["labels"]
    assert world.talks("other", "web")
    cli(agent, "endpoint", "labels", "other:eth0", "--add", "app=other")
    assert world.endpoint("other")["identity"] == before  # same labels, same number
    assert not world.talks("other", "web")
    rows = json.loads(cli(agent, "identity", "list", "--endpoints", "-o", "json").stdout)
    by_id = {r["id"]: r for r in rows}
    assert by_id[before]["endpoints"] == [world.endpoint("other")["id"]]
    assert by_id[1]["labels"] == "reserved:host"


def test_entities_host_and_cluster(world, agent, tmp_path):
    world.add("web", app="web")
    world.add("db", app="db")
    world.serve("db", "tcp", 8080)
    gateway = str(world.net.subnet.network_address + 1)  # the bridge: the host
    import_policy(agent, tmp_path, """
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: web-to-host}
        spec:
          endpointSelector: {matchLabels: {app: web}}
          egress: [{toEntities: [host]}]
    """)
    assert world.pings("web", gateway)
    assert not world.talks("web", "db")
    import_policy(agent, tmp_path, """
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: web-to-host}
        spec:
          endpointSelector: {matchLabels: {app: web}}
          egress: [{toEntities: [cluster]}]
    """)
    assert world.talks("web", "db")


def test_agent_restart_keeps_enforcing_and_identities(make_agent, make_network, pods, tmp_path):
    agent = make_agent(workdir=tmp_path / "a")
    world = Pods(agent, make_network(agent), pods)
    try:
        world.add("web", app="web")
        world.add("client", app="client")
        world.add("other", app="other")
        world.serve("web", "tcp", 8080)
        import_policy(agent, tmp_path, WEB_FROM_CLIENT)
        ids = {n: world.endpoint(n)["identity"] for n in ("web", "client", "other")}
        agent.stop()
        assert world.talks("client", "web") and not world.talks("other", "web")
        agent.start()
        assert {n: world.endpoint(n)["identity"] for n in ids} == ids
        assert world.talks("client", "web") and not world.talks("other", "web")
        assert len(json.loads(cli(agent, "policy", "get", "-o", "json").stdout)["rules"]) == 1
    finally:
        world.stop()


def test_monitor_shows_drop_with_identities(world, agent, tmp_path):
    world.add("web", app="web")
    world.add("other", app="other")
    world.serve("web", "tcp", 8080)
    import_policy(agent, tmp_path, WEB_FROM_CLIENT)
    mon = subprocess.Popen([lab.PLUGIN_BIN, "monitor", "--type", "drop", "-o", "json",
                            "--socket", agent.socket], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(60, mon.kill)  # a missing event fails, never hangs
    watchdog.start()
    try:
        assert "listening" in mon.stderr.readline()
        assert not world.talks("other", "web")
        # Only this flow's drop: a pod's own link-local IPv6 chatter may be
        # dropped (as world) around it.
        event = json.loads(mon.stdout.readline())
        while event.get("src") != world.ip["other"]:
            event = json.loads(mon.stdout.readline())
    finally:
        watchdog.cancel()
        mon.kill()
        mon.wait(5)
    assert event["reason"] == "policy-denied"
    assert event["srcIdentity"] == world.endpoint("other")["identity"]
    assert event["dstIdentity"] == world.endpoint("web")["identity"]
    assert event["src"] == world.ip["other"] and event["dst"] == world.ip["web"]
    assert event["dport"] == 8080 and event["direction"] == "ingress"
    assert event["epID"] == world.endpoint("web")["id"]


def test_import_errors_name_file_and_line_and_apply_nothing(world, agent, tmp_path):
    world.add("web", app="web")
    world.add("other", app="other")
    world.serve("web", "tcp", 8080)
    bad = tmp_path / "bad.yaml"
    bad.write_text(textwrap.dedent(WEB_FROM_CLIENT) + "  bogusField: 1\n")
    proc = cli(agent, "policy", "import", str(bad), check=False)
    assert proc.returncode != 0
    assert "%s:" % bad in proc.stderr and "bogusField" in proc.stderr
    assert json.loads(cli(agent, "policy", "get", "-o", "json").stdout)["rules"] == []
    assert world.talks("other", "web")


def test_watched_policy_directory(make_agent, make_network, pods, tmp_path):
    policy_dir = tmp_path / "policies"
    policy_dir.mkdir()
    config = tmp_path / "agent.yaml"
    config.write_text("policy-dir: %s\n" % policy_dir)
    agent = make_agent(workdir=tmp_path / "a", config=str(config))
    world = Pods(agent, make_network(agent), pods)
    try:
        world.add("web", app="web")
        world.add("other", app="other")
        world.serve("web", "tcp", 8080)
        assert world.talks("other", "web")
        (policy_dir / "web.yaml").write_text(textwrap.dedent(WEB_FROM_CLIENT))
        assert wait_for(lambda: not world.talks("other", "web", 8080))
        os.unlink(policy_dir / "web.yaml")
        assert wait_for(lambda: world.talks("other", "web", 8080))
    finally:
        world.stop()


def wait_for(predicate, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.3)
    return False


@pytest.fixture
def outside(world):
    """A namespace standing for the world outside the node, routed via the host."""
    n = 100 + int(lab.unique("")[:2], 16) % 100
    ns = lab.Netns()
    host_if = lab.unique("ccout")
    lab.sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns.name)
    lab.sh("ip", "addr", "add", "10.216.%d.1/24" % n, "dev", host_if)
    lab.sh("ip", "link", "set", host_if, "up")
    ns.run("ip", "addr", "add", "10.216.%d.2/24" % n, "dev", "eth0")
    ns.run("ip", "link", "set", "eth0", "up")
    ns.run("ip", "route", "add", "default", "via", "10.216.%d.1" % n)
    lab.sh("sysctl", "-qw", "net.ipv4.ip_forward=1")
    world.ns["outside"], world.ip["outside"] = ns, "10.216.%d.2" % n
    world.serve("outside", "tcp", 8080)
    yield "10.216.%d" % n
    lab.sh("ip", "link", "del", host_if, check=False)
    ns.remove()


def cidr_policy(direction, peers):
    key = "egress" if direction == "egress" else "ingress"
    return """
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: web-cidr}
        spec:
          endpointSelector: {matchLabels: {app: web}}
          %s:
          - %s
    """ % (key, peers)


def test_cidr_rules_to_the_outside_world(world, outside, agent, tmp_path):
    world.add("web", app="web")
    world.add("db", app="db")
    world.serve("db", "tcp", 8080)
    world.serve("web", "tcp", 8080)
    assert world.talks("web", "outside") and world.talks("outside", "web")
    import_policy(agent, tmp_path, cidr_policy("egress", "toCIDR: [%s.0/24]" % outside))
    assert world.talks("web", "outside")
    assert not world.talks("web", "db")
    import_policy(agent, tmp_path, cidr_policy(
        "egress", "toCIDRSet: [{cidr: %s.0/24, except: [%s.2/32]}]" % (outside, outside)))
    assert not world.talks("web", "outside")
    import_policy(agent, tmp_path, cidr_policy("egress", "toEntities: [world]"))
    assert world.talks("web", "outside")
    assert not world.talks("web", "db")
    # ingress from the outside: denied unless a fromCIDR rule allows it
    import_policy(agent, tmp_path, cidr_policy(
        "ingress", "fromEndpoints: [{matchLabels: {app: db}}]"))
    assert not world.talks("outside", "web")
    assert world.talks("db", "web")
    import_policy(agent, tmp_path, cidr_policy("ingress", "fromCIDR: [%s.2/32]" % outside))
    assert world.talks("outside", "web")
    assert not world.talks("db", "web")


def test_policy_selectors_show_identities_and_users(world, agent, tmp_path):
    world.add("web", app="web")
    world.add("client", app="client")
    import_policy(agent, tmp_path, WEB_FROM_CLIENT)
    rows = json.loads(cli(agent, "policy", "selectors", "-o", "json").stdout)
    client = world.endpoint("client")["identity"]
    peers = [r for r in rows if "client" in r["selector"]]
    assert len(peers) == 1 and peers[0]["identities"] == [client]
    assert peers[0]["users"] == ["endpoint %d" % world.endpoint("web")["id"]]
    # a new pod with the same labels shares the identity: the selector is unchanged
    world.add("client2", app="client")
    assert world.endpoint("client2")["identity"] == client
    table = cli(agent, "policy", "selectors").stdout
    assert "client" in table and str(client) in table


def host_talks(addr, port, timeout=1.5):
    """True if the node itself (this process, in the host netns) gets an echo."""
    try:
        with socket.create_connection((addr, port), timeout=timeout) as s:
            s.sendall(b"ping\n")
            return s.recv(16) != b""
    except OSError:
        return False


@pytest.mark.parametrize("allow_localhost", ["always", "policy"])
def test_the_node_reaches_its_pods_unless_allow_localhost_is_policy(
        make_agent, make_network, pods, tmp_path, allow_localhost):
    """kubelet's probes come from the node: Cilium's allow-localhost."""
    config = tmp_path / "agent.yaml"
    config.write_text("allow-localhost: %s\n" % allow_localhost)
    agent = make_agent(config=str(config))
    world = Pods(agent, make_network(agent), pods)
    try:
        world.add("web", app="web")
        world.add("other", app="other")
        world.serve("web", "tcp", 8080)
        import_policy(agent, tmp_path, WEB_FROM_CLIENT)
        assert not world.talks("other", "web")  # enforced
        assert host_talks(world.ip["web"], 8080) is (allow_localhost == "always")
        if allow_localhost == "policy":  # then a rule has to allow the host
            import_policy(agent, tmp_path, """
                apiVersion: cilium.io/v2
                kind: CiliumNetworkPolicy
                metadata: {name: web-from-host, namespace: default}
                spec:
                  endpointSelector: {matchLabels: {app: web}}
                  ingress: [{fromEntities: [host]}]
                """, name="host.yaml")
            assert host_talks(world.ip["web"], 8080)
        else:  # and a deny for the host still wins
            import_policy(agent, tmp_path, """
                apiVersion: cilium.io/v2
                kind: CiliumNetworkPolicy
                metadata: {name: web-deny-host, namespace: default}
                spec:
                  endpointSelector: {matchLabels: {app: web}}
                  ingressDeny: [{fromEntities: [host]}]
                """, name="host.yaml")
            assert not host_talks(world.ip["web"], 8080)
    finally:
        world.stop()
