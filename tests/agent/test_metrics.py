"""Prometheus metrics scraped over HTTP while real pods come and go.

Every count asserted here is of an operation this test made happen, on an
agent of its own (metrics on a free loopback port).
"""

import os
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from datapath.loader import Datapath
from datapath.maps.fields import ALWAYS_FULL
from tests import lab
from tests.agent.test_agent import our_conf
from tests.policy.test_pods import WEB_FROM_CLIENT, Pods, import_policy

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("require_root")]


def scrape(agent):
    address = agent.api("GET", "/v1/status")[1]["metricsAddress"]
    assert address.startswith("127.0.0.1:")
    with urllib.request.urlopen("http://%s/metrics" % address, timeout=10) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def ops(samples, verb, result="success"):
    return value(samples, "cilium_cni_operations_total", verb=verb, result=result)


def test_metrics_show_the_operations_that_happened(agent, make_network, pods, tmp_path):
    before = scrape(agent)
    assert all(ops(before, v) == 0 for v in ("ADD", "DEL", "CHECK", "GC", "STATUS"))
    assert value(before, "cilium_cni_identities", kind="reserved") == 5

    net = make_network(agent, cni_version="1.1.0")
    world = Pods(agent, net, pods)
    try:
        world.add("web", app="web")
        world.add("client", app="client")
        world.add("other", app="other")
        net.chain.check("web", world.ns["web"].path)
        # an ADD the agent refuses: no such interface in the pod
        conf = our_conf(net, prevResult=net.chain.cache[("other", "eth0")])
        rc, out, _ = lab.run_plugin(lab.PLUGIN_BIN, "ADD", conf, "bad", world.ns["other"].path,
                                    ifname="eth7")
        assert rc == 1 and out["code"] != 0
        world.serve("web", "tcp", 8080)
        assert world.talks("client", "web")
        import_policy(agent, tmp_path, WEB_FROM_CLIENT)
        assert not world.talks("other", "web")
        assert lab.run_plugin(lab.PLUGIN_BIN, "STATUS", our_conf(net))[0] == 0

        mid = scrape(agent)
        assert ops(mid, "ADD") == 3 and ops(mid, "ADD", "error") == 1
        assert ops(mid, "CHECK") == 1 and ops(mid, "STATUS") == 1
        assert ops(mid, "DEL") == 0
        hist = "cilium_cni_operation_duration_seconds_count"
        assert value(mid, hist, verb="ADD", result="success") == 3
        assert value(mid, "cilium_cni_operation_duration_seconds_bucket", verb="ADD",
                     result="success", le="+Inf") == 3
        assert value(mid, "cilium_cni_operation_duration_seconds_sum", verb="ADD",
                     result="success") > 0
        assert value(mid, "cilium_cni_endpoints", state="healthy") == 3
        assert value(mid, "cilium_cni_endpoints", state="unhealthy") == 0
        assert value(mid, "cilium_cni_identities", kind="endpoint") == 3
        assert value(mid, "cilium_cni_policy_rules") == 1
        assert value(mid, "cilium_cni_policy_revision") >= 1
        assert value(mid, "cilium_cni_map_entries", map="endpoints") == 3
        assert value(mid, "cilium_cni_map_capacity", map="endpoints") == 65536
        assert value(mid, "cilium_cni_map_entries", map="policy") >= 1
        assert 0 < value(mid, "cilium_cni_map_pressure", map="policy") < 1
        # client -> web passed both ways; other -> web was dropped at web's ingress
        assert value(mid, "cilium_cni_forwarded_packets_total", direction="egress") > 0
        assert value(mid, "cilium_cni_forwarded_bytes_total", direction="ingress") > 0
        assert value(mid, "cilium_cni_drops_total", direction="ingress",
                     reason="policy-denied") >= 1
        assert value(mid, "cilium_cni_drops_total", direction="egress",
                     reason="policy-denied") == 0

        net.chain.delete("client", world.ns["client"].path)
        gc = our_conf(net, **{"cni.dev/valid-attachments": [
            {"containerID": "web", "ifname": "eth0"}]})
        assert lab.run_plugin(lab.PLUGIN_BIN, "GC", gc)[0] == 0
        # a DEL of what is already gone is a success, not an error
        assert lab.run_plugin(lab.PLUGIN_BIN, "DEL", our_conf(net), "client",
                              world.ns["client"].path)[0] == 0

        after = scrape(agent)
        assert ops(after, "DEL") == 2 and ops(after, "DEL", "error") == 0
        assert ops(after, "GC") == 1
        assert ops(after, "ADD") == 3  # unchanged
        assert value(after, "cilium_cni_endpoints", state="healthy") == 1
        assert value(after, "cilium_cni_map_entries", map="endpoints") == 1
    finally:
        world.stop()


def test_metrics_can_be_disabled(make_agent):
    agent = make_agent()
    assert agent.api("GET", "/v1/status")[1]["metricsAddress"].startswith("127.0.0.1:")
    quiet = lab.Agent(agent.workdir + "-quiet", metrics_address="")
    try:
        quiet.start()
        assert quiet.api("GET", "/v1/status")[1]["metricsAddress"] is None
    finally:
        quiet.cleanup()


def test_metrics_port_in_use_is_refused(make_agent, tmp_path):
    first = make_agent()
    taken = first.api("GET", "/v1/status")[1]["metricsAddress"]
    second = lab.Agent(str(tmp_path / "second"), metrics_address=taken)
    try:
        with pytest.raises(RuntimeError) as err:
            second.start()
        assert "cannot serve metrics on %s (metrics-address)" % taken in str(err.value)
        assert "in use" in str(err.value)
        assert not second.bpf_root or not os.path.exists(second.bpf_root + "/progs")
    finally:
        second.cleanup()


def test_metrics_count_services(agent):
    assert value(scrape(agent), "cilium_cni_services") == 0
    status, body = agent.api("PUT", "/v1/services", {"services": [
        {"frontend": "10.96.7.1:80/tcp", "backends": ["10.213.250.2:8080", "10.213.250.3:8080"]},
        {"frontend": "10.96.7.2:53/udp", "backends": ["10.213.250.4:53"]}]})
    assert status == 200, body
    samples = scrape(agent)
    assert value(samples, "cilium_cni_services") == 2
    assert value(samples, "cilium_cni_service_backends") == 3
    # every pinned map that can fill up has its pressure, the load-balancer's
    # included; arrays (lb_config) hold all their entries always
    pressured = {m for (name, labels), _ in samples.items() if name == "cilium_cni_map_pressure"
                 for k, m in labels if k == "map"}
    assert pressured == {m for m, shape in Datapath.MAP_SHAPES.items()
                         if shape[0] not in ALWAYS_FULL}
    assert "lb_config" not in pressured
    assert any(m.startswith("lb") for m in pressured)
