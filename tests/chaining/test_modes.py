"""Every chaining mode against its prior plugin's real shape.

Calico, Weave Net, the AWS VPC CNI and flannel are stand-ins
(tests/fixtures/cni/prior.py) that build the host and pod exactly as the
real plugins' source does and print the same prevResult, oddities included;
bridge, ptp, portmap and host-local are Debian's real plugins. Traffic and
policy go through each mode's real host-side shape (proxy-ARP routed veths,
static-neighbour routed veths, bridges).
"""

import json
import os
import random
import uuid

import pytest

from chainers.calico import pod_suffix
from tests import lab
from tests.policy.test_pods import WEB_FROM_CLIENT, import_policy

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("require_root")]

FIXTURES = os.path.join(lab.REPO, "tests", "fixtures", "cni")
# A random /24 per network: routed modes put /32 routes in the host's table,
# so two test runs at once must not pick the same addresses.
_octets = iter(random.sample(range(1, 250), 249))


def cid():
    return uuid.uuid4().hex


class ModeNet:
    """One conflist: the mode's prior plugin (or stand-in), then cilium-cni."""

    def __init__(self, mode, version, agent, cni_path, tmp_path, knobs=None, portmap=None):
        self.mode, self.version, self.agent = mode, version, agent
        n = next(_octets)
        self.subnet = "10.215.%d.0/24" % n
        self.gateway = "10.215.%d.1" % n
        self.name = lab.unique("ccmode-")
        self.bridge = lab.unique("ccmb")
        ipam = {"type": "host-local", "subnet": self.subnet, "dataDir": str(tmp_path / self.name)}
        prior = {
            "calico": {"type": "calico", "ipam": ipam},
            "weave": {"type": "weave-net", "bridge": self.bridge,
                      "bridgeAddress": "%s/24" % self.gateway, "ipam": ipam},
            "aws-vpc": {"type": "aws-cni", "vethPrefix": "eni", "ipam": ipam},
            "flannel": {"type": "flannel", "subnetFile": str(tmp_path / (self.name + ".env")),
                        "dataDir": str(tmp_path / self.name),
                        "delegate": {"bridge": self.bridge, "ipMasq": False,
                                     "isDefaultGateway": True}},
            "portmap": {"type": "bridge", "bridge": self.bridge, "isGateway": True,
                        "isDefaultGateway": True, "ipMasq": False, "ipam": ipam},
        }[mode]
        prior.update(knobs or {})
        if mode == "flannel":
            with open(prior["subnetFile"], "w") as f:
                f.write("FLANNEL_NETWORK=10.215.0.0/16\nFLANNEL_SUBNET=%s/24\n"
                        "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n" % self.gateway)
        ours = {"type": "cilium-cni", "chaining-mode": mode, "agent-socket": agent.socket,
                "log-file": os.path.join(os.path.dirname(agent.socket), "plugin.log")}
        plugins = [prior, ours]
        if portmap:
            pm = {"type": "portmap", "capabilities": {"portMappings": True}, "snat": False}
            plugins.insert(1 if portmap == "before" else 2, pm)
        self.conflist = {"cniVersion": version, "name": self.name, "plugins": plugins}
        if mode == "aws-vpc":
            self.conflist["disableCheck"] = True  # as the AWS VPC CNI ships its conflist
        self.ours_at = plugins.index(ours)
        self.chain = lab.Chain(self.conflist, "%s:%s" % (FIXTURES, cni_path),
                               max_version=lab.REFERENCE_MAX_VERSION)
        self.pods = {}

    def add(self, ns, pod, container_id=None, labels=None, **kw):
        container_id = container_id or cid()
        result = self.chain.add(container_id, ns.path, labels=labels,
                                cni_args="K8S_POD_NAMESPACE=default;K8S_POD_NAME=%s" % pod, **kw)
        self.pods[container_id] = (ns, pod)
        return container_id, result

    def delete(self, container_id, use_cache=True):
        ns, pod = self.pods[container_id]
        self.chain.delete(container_id, ns.path, use_cache=use_cache,
                          cni_args="K8S_POD_NAMESPACE=default;K8S_POD_NAME=%s" % pod)

    def expected_host(self, container_id, pod):
        if self.mode == "calico":
            return "cali" + pod_suffix("default", pod)
        if self.mode == "aws-vpc":
            return "eni" + pod_suffix("default", pod)
        if self.mode == "weave":
            return "vethwepl" + container_id[:7]
        return None

    def endpoint(self, container_id):
        status, ep = self.agent.api("GET", "/v1/endpoints/%s:eth0" % container_id)
        assert status == 200, ep
        return ep

    def cleanup(self):
        for container_id in list(self.chain.cache):
            try:
                self.delete(container_id[0])
            except Exception:  # best effort; the sweep below removes the rest
                pass
        lab.sh("ip", "link", "del", self.bridge, check=False)
        prefix = self.subnet.rsplit(".", 1)[0] + "."
        for rule in json.loads(lab.sh("ip", "-j", "rule", "show").stdout or "[]"):
            for side in ("src", "dst"):
                if str(rule.get(side, "")).startswith(prefix):
                    lab.sh("ip", "rule", "del", "prio", str(rule["priority"]),
                           "from" if side == "src" else "to", rule[side], check=False)


@pytest.fixture
def make_mode(agent, cni_path, tmp_path):
    made = []

    def make(mode, version, knobs=None, portmap=None, on_agent=None):
        net = ModeNet(mode, version, on_agent or agent, cni_path, tmp_path, knobs, portmap)
        made.append(net)
        return net

    yield make
    for net in made:
        net.cleanup()


def pod_addresses(ns, ifname="eth0"):
    info = json.loads(ns.run("ip", "-j", "addr", "show", ifname).stdout)[0]
    return sorted("%s/%s" % (a["local"], a["prefixlen"]) for a in info["addr_info"]
                  if a.get("scope") != "link")


def host_peer(ns, ifname="eth0"):
    return json.loads(ns.run("ip", "-j", "link", "show", ifname).stdout)[0]["link_index"]


def first_ip(result):
    return result["ips"][0]["address"].split("/")[0]


# mode, cniVersion, knobs of the stand-in: every version the real plugin speaks
# and each prevResult shape it has printed.
SHAPES = [
    ("calico", "0.3.1", {"calicoVersion": "3.30"}),
    ("calico", "0.4.0", {"calicoVersion": "3.30"}),
    ("calico", "1.0.0", {"calicoVersion": "3.30"}),
    ("calico", "1.0.0", {"calicoVersion": "3.31"}),
    ("weave", "0.3.0", {}),
    ("aws-vpc", "0.4.0", {"awsVersion": "1.6"}),
    ("aws-vpc", "0.4.0", {"awsVersion": "1.12"}),
    ("aws-vpc", "0.4.0", {"awsVersion": "1.20", "sandboxAs": 0}),
    ("flannel", "0.3.1", {}),
    ("flannel", "0.4.0", {}),
    ("flannel", "1.0.0", {}),
    ("portmap", "0.4.0", {}),
    ("portmap", "1.0.0", {}),
]


@pytest.mark.parametrize("mode, version, knobs", SHAPES,
                         ids=["%s-%s-%s" % (m, v, "-".join(map(str, k.values())) or "std")
                              for m, v, k in SHAPES])
def test_add_check_del_per_mode_and_version(make_mode, pods, mode, version, knobs):
    net = make_mode(mode, version, knobs, portmap="after" if mode == "portmap" else None)
    ns = pods()
    pod = lab.unique("web-")
    container_id, result = net.add(ns, pod)
    outputs = net.chain.outputs[(container_id, "eth0")]

    # prevResult passes through unchanged in content and order.
    assert json.dumps(outputs[net.ours_at]) == json.dumps(outputs[net.ours_at - 1])
    assert result["cniVersion"] == version

    ep = net.endpoint(container_id)
    assert ep["chainingMode"] == mode
    assert ep["host"]["ifindex"] == host_peer(ns)  # from the kernel, not prevResult
    expected = net.expected_host(container_id, pod)
    if expected:
        assert ep["host"]["ifname"] == expected
    assert sorted(ep["interface"]["addresses"]) == pod_addresses(ns)

    # CHECK as the runtime runs it: skipped below 0.4.0 and with disableCheck.
    if version < "0.4.0":
        with pytest.raises(lab.CheckUnsupported):
            net.chain.check(container_id, ns.path)
    else:
        assert net.chain.check(container_id, ns.path) is (mode != "aws-vpc")
    if mode == "aws-vpc":  # called anyway, ours passes on AWS's prevResult
        conf = net.chain._netconf(net.conflist["plugins"][net.ours_at], net.chain.cache[
            (container_id, "eth0")])
        rc, out, err = lab.run_plugin(lab.PLUGIN_BIN, "CHECK", conf, container_id, ns.path)
        assert (rc, out) == (0, None), err

    net.delete(container_id)
    net.delete(container_id)  # twice is fine
    assert net.agent.endpoints() == []

    # DEL without prevResult (the runtime lost its cache, or ADD failed).
    ns2 = pods()
    container_id, _ = net.add(ns2, lab.unique("db-"))
    net.delete(container_id, use_cache=False)
    assert net.agent.endpoints() == []


@pytest.mark.parametrize("mode, version", [("calico", "1.0.0"), ("weave", "0.3.0"),
                                           ("aws-vpc", "0.4.0"), ("flannel", "1.0.0")])
def test_traffic_and_policy_through_each_shape(agent, make_mode, pods, tmp_path, mode, version):
    net = make_mode(mode, version)
    names = {}
    for role in ("web", "client", "other"):
        ns = pods()
        container_id, result = net.add(ns, lab.unique(role + "-"), labels={"app": role})
        names[role] = (ns, first_ip(result), container_id)
    server = lab.EchoServer(names["web"][0], "tcp", 8080)
    try:
        web_ip = names["web"][1]
        assert lab.talks(names["client"][0], "tcp", web_ip, 8080)
        assert lab.talks(names["other"][0], "tcp", web_ip, 8080)
        import_policy(agent, tmp_path, WEB_FROM_CLIENT)
        assert lab.talks(names["client"][0], "tcp", web_ip, 8080)
        assert not lab.talks(names["other"][0], "tcp", web_ip, 8080)
        drops = net.endpoint(names["web"][2])["stats"]["ingress"]["drops"]
        assert drops.get("policy-denied", 0) >= 1
    finally:
        server.stop()


@pytest.mark.parametrize("mode", ["calico", "aws-vpc"])
def test_recreated_pod_with_the_same_name_and_a_late_del(make_mode, pods, mode):
    """Calico and AWS name the host veth after namespace and pod: a pod
    recreated under the same name gets a device of the same name, and the old
    pod's DEL may arrive after the new pod's ADD."""
    net = make_mode(mode, "1.0.0" if mode == "calico" else "0.4.0")
    old_ns, new_ns = pods(), pods()
    old_id, _ = net.add(old_ns, "same-pod")
    old_ep = net.endpoint(old_id)
    new_id, result = net.add(new_ns, "same-pod")
    new_ep = net.endpoint(new_id)
    assert new_ep["host"]["ifname"] == old_ep["host"]["ifname"]
    assert new_ep["host"]["ifindex"] != old_ep["host"]["ifindex"]

    net.delete(old_id)  # late: its device name now belongs to the new pod

    assert [e["key"] for e in net.agent.endpoints()] == ["%s:eth0" % new_id]
    dev = new_ep["host"]["ifname"]
    assert "from_container" in lab.sh("tc", "filter", "show", "dev", dev, "ingress").stdout
    assert "to_container" in lab.sh("tc", "filter", "show", "dev", dev, "egress").stdout
    if mode == "calico":
        assert net.chain.check(new_id, new_ns.path)
    status, report = net.agent.api("POST", "/v1/endpoints/%s:eth0/check" % new_id, {})
    assert (status, report["problems"]) == (200, []), report
    before = net.endpoint(new_id)["stats"]["ingress"]["packets"]
    assert lab.sh("ping", "-c", "2", "-i", "0.2", "-W", "2", first_ip(result),
                  check=False).returncode == 0
    assert net.endpoint(new_id)["stats"]["ingress"]["packets"] >= before + 2


def test_two_interfaces_in_one_pod_only_ifname_is_ours(agent, make_mode, pods, cni_path, tmp_path):
    ns = pods()
    # net1 from another network that does not chain cilium-cni (a multus-style
    # second attachment), then eth0 through calico -> cilium-cni.
    bridge = lab.unique("ccm1")
    other = {"cniVersion": "1.0.0", "name": lab.unique("ccsecond-"), "plugins": [
        {"type": "bridge", "bridge": bridge, "ipMasq": False,
         "ipam": {"type": "host-local", "subnet": "10.216.%d.0/24" % next(_octets),
                  "dataDir": str(tmp_path / "second")}}]}
    second = lab.Chain(other, cni_path, max_version=lab.REFERENCE_MAX_VERSION)
    try:
        second.add("pod-two", ns.path, ifname="net1")
        net = make_mode("calico", "1.0.0")
        container_id, _ = net.add(ns, lab.unique("two-"))
        (ep,) = agent.endpoints()
        assert ep["ifname"] == "eth0"
        assert ep["interface"]["addresses"] == pod_addresses(ns, "eth0")
        assert not set(ep["interface"]["addresses"]) & set(pod_addresses(ns, "net1"))
        assert ep["host"]["ifindex"] == host_peer(ns, "eth0")
        assert net.chain.check(container_id, ns.path)
        net.delete(container_id)
        assert agent.endpoints() == []
        assert pod_addresses(ns, "net1")  # the other attachment is untouched
        second.delete("pod-two", ns.path, ifname="net1")
    finally:
        lab.sh("ip", "link", "del", bridge, check=False)


@pytest.mark.parametrize("position", ["before", "after"])
def test_portmap_before_and_after_cilium_host_ports_and_policy(agent, make_mode, pods, tmp_path,
                                                               position):
    net = make_mode("portmap", "1.0.0", portmap=position)
    # Clients on a second network: their traffic to the host port is routed
    # (and un-DNATed) by the host both ways.
    clients = make_mode("flannel", "1.0.0")
    web_ns = pods()
    host_port = random.randrange(20000, 30000)
    web_id, result = net.add(web_ns, lab.unique("web-"), labels={"app": "web"},
                             port_mappings=[{"hostPort": host_port, "containerPort": 8080,
                                             "protocol": "tcp"}])
    assert result["cniVersion"] == "1.0.0"
    outputs = net.chain.outputs[(web_id, "eth0")]
    assert json.dumps(outputs[net.ours_at]) == json.dumps(outputs[net.ours_at - 1])
    client_ns, other_ns = pods(), pods()
    clients.add(client_ns, lab.unique("client-"), labels={"app": "client"})
    clients.add(other_ns, lab.unique("other-"), labels={"app": "other"})
    server = lab.EchoServer(web_ns, "tcp", 8080)
    try:
        assert lab.talks(client_ns, "tcp", net.gateway, host_port)
        assert lab.talks(other_ns, "tcp", net.gateway, host_port)
        import_policy(agent, tmp_path, WEB_FROM_CLIENT)
        assert lab.talks(client_ns, "tcp", net.gateway, host_port)
        assert not lab.talks(other_ns, "tcp", net.gateway, host_port)
    finally:
        server.stop()
    net.delete(web_id)
    assert str(host_port) not in lab.sh("iptables-save", "-t", "nat").stdout


def test_concurrent_lo_and_eth0_of_the_same_pods(agent, make_mode, pods):
    """containerd sets up a pod's loopback and its network at once."""
    net = make_mode("calico", "1.0.0")
    lo_conf = {"cniVersion": "1.0.0", "name": "cni-loopback", "type": "loopback"}
    made = [(pods(), lab.unique("par-"), cid()) for _ in range(6)]

    def lo(command, ns, container_id):
        rc, out, err = lab.run_plugin(os.path.join(lab.REFERENCE_PLUGINS, "loopback"), command,
                                      lo_conf, container_id, ns.path, "lo")
        assert rc == 0, (out, err)

    errors = lab.in_parallel(call for ns, pod, container_id in made
                             for call in ((net.add, ns, pod, container_id), (lo, "ADD", ns, container_id)))
    assert errors == []
    assert sorted(e["key"] for e in agent.endpoints()) == sorted(
        "%s:eth0" % c for _, _, c in made)
    errors = lab.in_parallel(call for ns, _, container_id in made
                             for call in ((net.delete, container_id), (lo, "DEL", ns, container_id)))
    assert errors == []
    assert agent.endpoints() == []
