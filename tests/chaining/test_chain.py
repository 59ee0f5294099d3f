"""End to end: real reference plugins, then cilium-cni, in real namespaces.

Pods are network namespaces wired by Debian's bridge / ptp / portmap; the
agent is a real process; traffic is real ping/TCP, counted by the programs.
"""

import json
import os
import time

import pytest

from tests import lab

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("require_root")]

VERSIONS = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]


def pod_ip(result, ifname="eth0"):
    names = [i.get("name") for i in result.get("interfaces", [])]
    for ip in result["ips"]:
        if "interface" not in ip or names[ip["interface"]] == ifname:
            return ip["address"].split("/")[0]
    raise AssertionError("no address for %s in %s" % (ifname, result))


def tc_filters(dev, hook):
    return lab.sh("tc", "filter", "show", "dev", dev, hook, check=False).stdout


def stats(agent, key):
    status, ep = agent.api("GET", "/v1/endpoints/%s" % key)
    assert status == 200, ep
    return ep["stats"]


def map_dump(agent, name):
    out = lab.sh("bpftool", "-j", "map", "dump", "pinned",
                 os.path.join(agent.bpf_root, "maps", name)).stdout
    return json.loads(out or "[]")


def metrics_endpoint_ids(agent):
    """Endpoint ids with counters in the pinned metrics map (0 = unknown device)."""
    return {int.from_bytes(bytes(int(b, 16) for b in e["key"][:4]), "little")
            for e in map_dump(agent, "metrics")}


def ping(ns, ip, count=3):
    return ns.run("ping", "-c", str(count), "-i", "0.2", "-W", "2", ip, check=False)


@pytest.mark.parametrize("cni_version", VERSIONS)
def test_bridge_chain_add_traffic_check_del(agent, make_network, pods, cni_version):
    net = make_network(agent, cni_version=cni_version)
    a, b = pods(), pods()
    ra = net.chain.add("ctr-a", a.path, cni_args="K8S_POD_NAMESPACE=default;K8S_POD_NAME=a")
    rb = net.chain.add("ctr-b", b.path)

    # A chained ADD returns the prior plugin's result, in the requested version.
    assert ra["cniVersion"] == cni_version
    assert any(i["name"] == "eth0" and i.get("sandbox") == a.path for i in ra["interfaces"])
    if cni_version < "1.0.0":
        assert all(ip["version"] == "4" for ip in ra["ips"])

    ep = {e["key"]: e for e in agent.endpoints()}
    assert set(ep) == {"ctr-a:eth0", "ctr-b:eth0"}
    epa = ep["ctr-a:eth0"]
    assert epa["k8s"] == {"namespace": "default", "podName": "a"}
    assert epa["interface"]["addresses"] == [ip["address"] for ip in ra["ips"]]
    # The host veth is the kernel's peer of the pod's eth0, not taken from prevResult.
    peer = json.loads(a.run("ip", "-j", "link", "show", "eth0").stdout)[0]["link_index"]
    assert epa["host"]["ifindex"] == peer
    assert "from_container" in tc_filters(epa["host"]["ifname"], "ingress")
    assert "to_container" in tc_filters(epa["host"]["ifname"], "egress")

    before = stats(agent, "ctr-a:eth0")
    assert ping(a, pod_ip(rb)).returncode == 0
    after = stats(agent, "ctr-a:eth0")
    assert after["egress"]["packets"] - before["egress"]["packets"] >= 3
    assert after["ingress"]["packets"] - before["ingress"]["packets"] >= 3
    assert after["egress"]["bytes"] - before["egress"]["bytes"] >= 3 * 84
    assert stats(agent, "ctr-b:eth0")["ingress"]["packets"] >= 3

    if cni_version >= "0.4.0":
        net.chain.check("ctr-a", a.path)

    net.chain.delete("ctr-a", a.path)
    net.chain.delete("ctr-a", a.path)  # DEL twice is fine
    assert [e["key"] for e in agent.endpoints()] == ["ctr-b:eth0"]
    net.chain.delete("ctr-b", b.path)
    assert agent.endpoints() == []
    assert map_dump(agent, "endpoints") == []


def test_ptp_portmap_chain(agent, pods, cni_path, tmp_path):
    conflist = {
        "cniVersion": "1.0.0", "name": lab.unique("ccptp-"),
        "plugins": [
            {"type": "ptp", "ipMasq": False,
             "ipam": {"type": "host-local", "subnet": "10.214.7.0/24",
                      "dataDir": str(tmp_path / "ipam")}},
            {"type": "portmap", "capabilities": {"portMappings": True}, "snat": False},
            {"type": "cilium-cni", "chaining-mode": "generic-veth", "agent-socket": agent.socket,
             "log-file": str(tmp_path / "plugin.log")},
        ],
    }
    chain = lab.Chain(conflist, cni_path)
    p = pods()
    result = chain.add("ctr-ptp", p.path)
    assert [i["name"] for i in result["interfaces"]][-1] == "eth0"
    (ep,) = agent.endpoints()
    assert ep["host"]["ifname"].startswith("veth")
    ip = pod_ip(result)
    assert lab.sh("ping", "-c", "3", "-i", "0.2", "-W", "2", ip, check=False).returncode == 0
    s = stats(agent, "ctr-ptp:eth0")
    assert s["ingress"]["packets"] >= 3 and s["egress"]["packets"] >= 3
    chain.check("ctr-ptp", p.path)
    chain.delete("ctr-ptp", p.path)
    assert agent.endpoints() == []


def test_del_without_prev_result_and_after_netns_gone(agent, make_network, pods):
    net = make_network(agent)
    a, b = pods(), pods()
    net.chain.add("ctr-a", a.path)
    net.chain.add("ctr-b", b.path)
    plugin = net.conflist["plugins"][-1]
    conf = dict(plugin, name=net.name, cniVersion="1.0.0")
    # DEL with no prevResult (e.g. after the runtime lost its cache).
    rc, out, _ = lab.run_plugin(lab.PLUGIN_BIN, "DEL", conf, "ctr-a", a.path)
    assert (rc, out) == (0, None)
    # DEL after the netns is gone.
    b.remove()
    rc, out, _ = lab.run_plugin(lab.PLUGIN_BIN, "DEL", conf, "ctr-b", b.path)
    assert (rc, out) == (0, None)
    # DEL with an empty CNI_NETNS and an unknown container.
    rc, out, _ = lab.run_plugin(lab.PLUGIN_BIN, "DEL", conf, "ctr-never", "")
    assert (rc, out) == (0, None)
    assert agent.endpoints() == []
    net.chain.delete("ctr-a", a.path)


def test_add_and_check_with_agent_down_fail_with_code_11(make_agent, make_network, pods):
    agent = make_agent()
    net = make_network(agent)
    p = pods()
    net.chain.add("ctr-up", p.path)
    agent.stop()
    q = pods()
    t0 = time.monotonic()
    with pytest.raises(lab.PluginFailed) as err:
        net.chain.add("ctr-down", q.path)
    assert time.monotonic() - t0 < 10
    assert err.value.plugin == "cilium-cni"
    assert err.value.out["code"] == 11
    assert "cilium-cni agent" in err.value.out["msg"] and "start it" in err.value.out["msg"]
    with pytest.raises(lab.PluginFailed) as err:
        net.chain.check("ctr-up", p.path)
    assert err.value.out["code"] == 11
    # the failed ADD's DEL (runtime cleanup) succeeds without an agent
    net.chain.delete("ctr-down", q.path, use_cache=False)


def test_del_with_agent_down_is_completed_on_start(make_agent, make_network, pods, tmp_path):
    agent = make_agent(workdir=tmp_path / "a")
    net = make_network(agent)
    p = pods()
    net.chain.add("ctr-x", p.path)
    (ep,) = agent.endpoints()
    agent.stop()
    net.chain.delete("ctr-x", p.path)  # succeeds: recorded on disk
    pending = os.path.join(os.path.dirname(agent.socket), "pending-deletes")
    assert os.listdir(pending) == ["ctr-x:eth0.json"]
    agent.start()
    assert agent.endpoints() == []
    assert os.listdir(pending) == []
    assert map_dump(agent, "endpoints") == []
    assert "completed recorded deletion of ctr-x:eth0" in agent.log()


def test_agent_restart_keeps_traffic_counted_and_restores(make_agent, make_network, pods,
                                                          tmp_path):
    agent = make_agent(workdir=tmp_path / "a")
    net = make_network(agent)
    a, b = pods(), pods()
    net.chain.add("ctr-a", a.path)
    rb = net.chain.add("ctr-b", b.path)
    before = {e["key"]: e for e in agent.endpoints()}
    agent.stop()
    # Agent down: traffic still flows through the attached programs, still counted.
    assert ping(a, pod_ip(rb), count=5).returncode == 0
    agent.start()
    after = {e["key"]: e for e in agent.endpoints()}
    assert set(after) == set(before)
    for key in before:
        assert after[key]["id"] == before[key]["id"]
        assert after[key]["host"] == before[key]["host"]
    grown = after["ctr-a:eth0"]["stats"]["egress"]["packets"] - \
        before["ctr-a:eth0"]["stats"]["egress"]["packets"]
    assert grown >= 5, "packets sent while the agent was down were not counted"
    net.chain.check("ctr-a", a.path)
    assert ping(a, pod_ip(rb)).returncode == 0
    for cid, ns in (("ctr-a", a), ("ctr-b", b)):
        net.chain.delete(cid, ns.path)
    assert agent.endpoints() == []


def test_twenty_parallel_adds(agent, make_network, pods):
    net = make_network(agent)
    made = [(("ctr-%02d" % i), pods()) for i in range(20)]
    errors = lab.in_parallel((net.chain.add, cid, ns.path) for cid, ns in made)
    assert errors == []
    eps = agent.endpoints()
    assert sorted(e["key"] for e in eps) == sorted("%s:eth0" % cid for cid, _ in made)
    assert len({e["id"] for e in eps}) == 20
    assert len(map_dump(agent, "endpoints")) == 20
    lab.in_parallel((net.chain.delete, cid, ns.path) for cid, ns in made)
    assert agent.endpoints() == []
    assert map_dump(agent, "endpoints") == []
    assert metrics_endpoint_ids(agent) <= {0}


def test_dual_stack_addresses_skip_link_local(agent, pods, cni_path, tmp_path):
    conflist = {
        "cniVersion": "1.0.0", "name": lab.unique("ccds-"),
        "plugins": [
            {"type": "bridge", "bridge": lab.unique("ccds"), "isGateway": True, "ipMasq": False,
             "ipam": {"type": "host-local", "dataDir": str(tmp_path / "ipam"),
                      "ranges": [[{"subnet": "10.215.3.0/24"}], [{"subnet": "fd00:215:3::/64"}]]}},
            {"type": "cilium-cni", "chaining-mode": "generic-veth", "agent-socket": agent.socket,
             "log-file": str(tmp_path / "plugin.log")},
        ],
    }
    chain = lab.Chain(conflist, cni_path)
    p, q = pods(), pods()
    try:
        result = chain.add("ctr-ds", p.path)
        other = chain.add("ctr-ds2", q.path)
        ep = {e["key"]: e for e in agent.endpoints()}["ctr-ds:eth0"]
        assert sorted(ep["interface"]["addresses"]) == sorted(ip["address"] for ip in result["ips"])
        assert any(":" in a for a in ep["interface"]["addresses"])
        assert not any(a.startswith("fe80") for a in ep["interface"]["addresses"])
        v6 = [ip["address"].split("/")[0] for ip in other["ips"] if ":" in ip["address"]][0]
        before = stats(agent, "ctr-ds:eth0")["egress"]["packets"]
        # DAD may hold a fresh address for a moment; ping retries within its deadline.
        assert p.run("ping", "-6", "-c", "3", "-i", "0.2", "-w", "10", v6, check=False).returncode == 0
        assert stats(agent, "ctr-ds:eth0")["egress"]["packets"] - before >= 3
        chain.check("ctr-ds", p.path)
        chain.delete("ctr-ds", p.path)
        chain.delete("ctr-ds2", q.path)
        assert agent.endpoints() == []
    finally:
        lab.sh("ip", "link", "del", conflist["plugins"][0]["bridge"], check=False)
