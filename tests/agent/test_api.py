"""The agent's API on a real agent, against its document (agent/api/openapi.yaml).

Every operation of the document is called on a real agent with real pods,
and each answer is checked against the response the document declares for
it (lab.Agent's client checks every response a test gets, this file's and
every other e2e test's: tests/apicontract.py); the monitor's stream too,
line by line. tests/agent/test_api_fuzz.py fuzzes the same operations.
"""

import json
import socket
import textwrap
import time

import pytest

from tests.apicontract import DOCUMENT, ROUTER
from tests.chaining.test_chain import pod_ip
from tests.policy.test_pods import WEB_FROM_CLIENT

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("require_root")]

SERVICES = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec: {clusterIP: 10.96.70.1, ports: [{name: http, port: 80, protocol: TCP}]}
---
apiVersion: v1
kind: Endpoints
metadata: {name: web, namespace: default}
subsets: [{addresses: [{ip: 10.213.251.2}], ports: [{name: http, port: 8080, protocol: TCP}]}]
"""


class Calls:
    """The agent's API, remembering which operations were called."""

    def __init__(self, agent):
        self.agent = agent
        self.seen = set()

    def __call__(self, method, url, body=None, status=200):
        got, out = self.agent.api(method, url, body)  # checked against the document
        assert got == status, (method, url, out)
        self.seen.add((ROUTER.find(method, url) or (None, None))[1])
        return out


def monitor_event(agent, cause, timeout=30.0):
    """The first event of GET /v1/monitor?type=drop after `cause()` runs."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(agent.socket)
        sock.sendall(b"GET /v1/monitor?type=drop HTTP/1.0\r\n\r\n")
        reader = sock.makefile("rb")
        assert reader.readline().split()[1] == b"200"
        head = b""
        while (line := reader.readline()) not in (b"\r\n", b""):
            head += line
        assert b"Content-Type: application/x-ndjson" in head
        cause()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = reader.readline().strip()
            if line:  # empty lines are heartbeats
                return json.loads(line)
    raise AssertionError("no drop event within %.0f s" % timeout)


def test_every_operation_answers_as_the_document_declares(agent, make_network, pods):
    api = Calls(agent)
    net = make_network(agent)
    web, other = pods(), pods()
    net.chain.add("web", web.path, cni_args="K8S_POD_NAMESPACE=default;K8S_POD_NAME=web")
    other_ip = pod_ip(net.chain.add("other", other.path,
                                    cni_args="K8S_POD_NAMESPACE=default;K8S_POD_NAME=other"))
    web_ip = pod_ip(net.chain.cache[("web", "eth0")])

    assert api("GET", "/v1/healthz") == {"status": "ok"}
    assert api("GET", "/v1/status")["endpoints"] == 2
    assert [e["key"] for e in api("GET", "/v1/endpoints")] == ["web:eth0", "other:eth0"]
    ep = api("GET", "/v1/endpoints/web:eth0")
    again = api("PUT", "/v1/endpoints/web:eth0", {  # a repeated ADD, straight to the API
        "containerID": "web", "ifname": "eth0", "netns": web.path, "network": net.name,
        "chainingMode": "generic-veth"}, status=201)
    assert again["id"] == ep["id"] and again["datapath"]["hooks"]
    assert "cni:app=web" in api("PUT", "/v1/endpoints/web:eth0/labels",
                                {"add": ["app=web"]})["labels"]
    assert api("POST", "/v1/endpoints/web:eth0/check", {"addresses": None}) == {"problems": []}
    assert api("POST", "/v1/policy?operation=api-test", {"files": [
        {"source": "web.yaml", "text": textwrap.dedent(WEB_FROM_CLIENT)}]})["rules"] == 1
    assert api("GET", "/v1/operations/api-test")["state"] == "done"
    assert any(op["id"] == "api-test" for op in api("GET", "/v1/operations"))
    assert [r["name"] for r in api("GET", "/v1/policy")["rules"]] == ["web-from-client"]
    assert api("GET", "/v1/policy/selectors")
    assert api("GET", "/v1/endpoints/web:eth0/bpf-policy")["enforced"]["ingress"] is True
    assert any(i["endpoints"] == [ep["id"]] for i in api("GET", "/v1/identities"))

    event = monitor_event(agent, lambda: other.run("ping", "-c", "2", "-i", "0.2", "-W", "1",
                                                   web_ip, check=False))
    assert not list(ROUTER.validator("/components/schemas/MonitorEvent").iter_errors(event))
    assert event["type"] == "drop"
    api.seen.add("get_monitor")

    api("PUT", "/v1/services", {"services": [
        {"frontend": "10.96.70.2:53/udp", "backends": [{"address": other_ip, "port": 53}]}]})
    assert api("POST", "/v1/services/import", {"files": [
        {"source": "web.yaml", "text": SERVICES}]}) == {"services": 1, "names": 1}
    assert len(api("GET", "/v1/services")) == 2
    assert len(api("GET", "/v1/services/bpf")) == 2
    assert api("DELETE", "/v1/services?all=1")["deleted"]
    assert api("DELETE", "/v1/services?name=default/web", status=404)["error"]["code"] == 3
    assert api("DELETE", "/v1/policy?all=1")["deleted"] == 1
    assert api("POST", "/v1/gc", {"network": net.name, "valid": [
        {"containerID": "web", "ifname": "eth0"}]}) == {"removed": ["other:eth0"]}
    assert api("DELETE", "/v1/endpoints/web:eth0") == {"deleted": "web:eth0"}
    assert api("DELETE", "/v1/endpoints/web:eth0", status=404)["error"]["code"] == 3

    # an agent alone is in no cluster (tests/cli/test_cluster.py has one that is)
    for url in ("/v1/nodes", "/v1/kvstore?prefix=nodes/"):
        assert "kvstore: etcd" in api("GET", url, status=404)["error"]["message"]

    declared = {op["operationId"] for path in DOCUMENT["paths"].values()
                for op in path.values() if isinstance(op, dict) and "operationId" in op}
    assert api.seen == declared


def test_errors_are_the_declared_error_body(agent):
    api = Calls(agent)
    assert "invalid endpoint key" in api("PUT", "/v1/endpoints/bad!key", {"x": 1},
                                         status=400)["error"]["message"]
    gone = api("PUT", "/v1/endpoints/c1:eth0", {
        "containerID": "c1", "ifname": "eth0", "netns": "/var/run/netns/no-such-pod",
        "network": "n", "chainingMode": "generic-veth"}, status=404)
    assert gone["error"]["code"] == 3
    assert api("GET", "/v1/nothing", status=404)["error"]["code"] == 101
    assert api("POST", "/v1/healthz", status=405)["error"]["code"] == 101
