"""The agent's router, in process and without root: the API document and the
handlers in step, requests routed through the table to handlers over a
hand-written fake manager and worker, bad requests answered with the
declared error body and a message naming what was wrong, unknown routes
(404) and methods (405) answered as the agent's errors (CNI code 101), and
the HTTP server's own checks on a real Unix socket.
"""

import json
import logging
import socket
import threading
import time

import pytest

from agent import api_services
from agent.endpoints import EndpointManager
from agent.errors import MAPPING, AgentError, NotFound
from agent.operations import Operations
from agent.router import Router, load_document, operations
from agent.server import HANDLERS, Api, UnixApiServer
from cni import errors as cni
from tests.apicontract import check_response

pytestmark = pytest.mark.unit

KEY = "ctr-1:eth0"


def record(key=KEY, ep_id=1):
    cid, ifname = key.split(":")
    return {"id": ep_id, "key": key, "containerID": cid, "ifname": ifname,
            "netns": "/var/run/netns/pod", "network": "podnet", "chainingMode": "generic-veth",
            "k8s": {"namespace": "default"}, "datapath": {"hooks": ["tc ingress"]},
            "interface": {"ifname": ifname, "ifindex": 2, "mac": "aa:bb:cc:dd:ee:02",
                          "mtu": 1500, "addresses": ["10.0.0.2/24"]},
            "host": {"ifname": "veth1", "ifindex": 9, "mac": "aa:bb:cc:dd:ee:01"},
            "createdAt": 1.0, "identity": 256, "labels": ["cni:app=web"]}


class FakeManager:
    """Endpoints in a dict; records what the handlers asked of it."""

    def __init__(self):
        self.endpoints = {KEY: record()}
        self.calls = []

    def list(self):
        return list(self.endpoints.values())

    def get(self, key):
        if key not in self.endpoints:
            raise NotFound("no endpoint '%s'" % key)
        return self.endpoints[key]

    def with_stats(self, ep):
        zero = {"packets": 0, "bytes": 0, "drops": {}}
        return dict(ep, stats={"egress": zero, "ingress": zero})

    def create(self, key, req):
        self.calls.append(("create", key, req))
        self.endpoints[key] = record(key, len(self.endpoints) + 1)
        return self.endpoints[key]

    def delete(self, key):
        self.calls.append(("delete", key))
        return self.endpoints.pop(key, None) is not None

    def check(self, key, addresses):
        self.get(key)
        self.calls.append(("check", key, addresses))
        return ["addresses of 'eth0' changed"] if addresses == ["10.9.9.9/24"] else []

    def change_labels(self, key, add, delete):
        self.calls.append(("labels", key, add, delete))
        return self.get(key)

    def gc(self, network, valid):
        self.calls.append(("gc", network, valid))
        return []


class InlineWorker:
    """Runs each change at once, on the caller's thread."""

    def submit(self, fn, *args, wait=60.0):
        return fn(*args)


class FakeHub:
    def stream(self, kind, stopping):
        yield {"type": "drop", "time": 1.0}


@pytest.fixture
def api():
    return Api(FakeManager(), InlineWorker(), lambda: {"version": "test"}, hub=FakeHub(),
               operations=Operations())


def call(api, method, url, body=None):
    """Like the HTTP server: an AgentError becomes its status and error body,
    which must be as the document declares (success bodies here are the
    fakes'; tests/agent/test_api.py checks a real agent's)."""
    try:
        status, out = api.handle(method, url, body)
    except AgentError as exc:
        status, out = exc.status, exc.to_body()
    if status >= 400:
        check_response(method, url, status, out)
    return status, out


def error(api, method, url, body=None):
    status, out = call(api, method, url, body)
    assert status >= 400, out
    return status, out["error"]["code"], out["error"]["message"]


# --- the document and the handlers -----------------------------------------

def test_every_operation_has_its_handler_and_every_handler_an_operation():
    document = load_document()
    declared = {op["operationId"]: (method, path) for method, path, op in operations(document)}
    assert len(declared) == len(list(operations(document)))  # ids are unique
    assert set(declared) == set(HANDLERS)
    for op_id, fn in HANDLERS.items():
        assert fn.__name__ == op_id
    assert {fn.__module__ for fn in HANDLERS.values()} == {"agent.server", "agent.api_services",
                                                          "agent.api_cluster"}
    assert set(api_services.HANDLERS) == {op for op, (_, path) in declared.items()
                                          if path.startswith("/v1/services")}


def test_a_router_refuses_a_document_and_handlers_out_of_step():
    handlers = dict(HANDLERS)
    del handlers["get_healthz"]
    with pytest.raises(ValueError, match="no handler for \\['get_healthz'\\]"):
        Router(load_document(), handlers)
    with pytest.raises(ValueError, match="not in the document: \\['get_everything'\\]"):
        Router(load_document(), dict(HANDLERS, get_everything=lambda api, req: (200, {})))


def test_every_error_response_is_the_error_body():
    for method, path, op in operations(load_document()):
        for status, response in op["responses"].items():
            if status == "default" or int(status) >= 400:
                assert response == {"$ref": "#/components/responses/Error"}, (method, path)


def test_every_agent_error_has_one_status_and_cni_code():
    import agent.errors as module
    classes = {c for c in vars(module).values()
               if isinstance(c, type) and issubclass(c, AgentError)}
    assert classes == set(MAPPING)
    assert MAPPING[module.RouteNotFound] == (404, cni.AGENT_FAILURE)
    assert MAPPING[module.NotFound] == (404, cni.UNKNOWN_CONTAINER)
    assert module.MethodNotAllowed("x", allow=["GET"]).headers() == {"Allow": "GET"}


# --- routing to handlers ------------------------------------------------------

def test_reads_are_routed_to_their_handlers(api):
    assert call(api, "GET", "/v1/healthz") == (200, {"status": "ok"})
    assert call(api, "GET", "//v1/healthz/") == (200, {"status": "ok"})  # as before
    assert call(api, "GET", "/v1/status")[1] == {"version": "test"}
    status, eps = call(api, "GET", "/v1/endpoints")
    assert status == 200 and [e["key"] for e in eps] == [KEY] and "stats" in eps[0]
    status, ep = call(api, "GET", "/v1/endpoints/%s" % KEY)
    assert (status, ep["id"]) == (200, 1)
    assert call(api, "GET", "/v1/operations") == (200, [])


def test_changes_reach_the_manager_with_the_checked_body(api):
    body = {"containerID": "ctr-2", "ifname": "eth0", "netns": "/var/run/netns/p2",
            "network": "podnet", "chainingMode": "calico", "k8s": {"namespace": "default"},
            "unknownField": 1}
    status, ep = call(api, "PUT", "/v1/endpoints/ctr-2:eth0", body)
    assert (status, ep["key"]) == (201, "ctr-2:eth0")
    assert api.manager.calls[-1] == ("create", "ctr-2:eth0", body)
    assert call(api, "DELETE", "/v1/endpoints/ctr-2:eth0") == (200, {"deleted": "ctr-2:eth0"})
    assert error(api, "DELETE", "/v1/endpoints/ctr-2:eth0") == (
        404, cni.UNKNOWN_CONTAINER, "no endpoint 'ctr-2:eth0'")
    assert call(api, "POST", "/v1/endpoints/%s/check" % KEY) == (200, {"problems": []})
    assert call(api, "POST", "/v1/endpoints/%s/check" % KEY, {"addresses": ["10.9.9.9/24"]}) \
        == (200, {"problems": ["addresses of 'eth0' changed"]})
    assert call(api, "PUT", "/v1/endpoints/%s/labels" % KEY, {"add": ["app=db"]})[0] == 200
    assert api.manager.calls[-1] == ("labels", KEY, ["app=db"], [])
    valid = [{"containerID": "ctr-1", "ifname": "eth0"}]
    assert call(api, "POST", "/v1/gc", {"network": "podnet", "valid": valid}) == (
        200, {"removed": []})
    assert api.manager.calls[-1] == ("gc", "podnet", valid)


def test_monitor_streams_and_operations_are_found_by_id(api):
    status, out = api.handle("GET", "/v1/monitor?type=drop", None)
    assert status == 200 and list(out.items) == [{"type": "drop", "time": 1.0}]
    api.operations.run("policy-import", lambda op: op.update(1, 2), "op-1")
    status, op = call(api, "GET", "/v1/operations/op-1")
    assert (status, op["state"], op["done"]) == (200, "done", 1)
    assert error(api, "GET", "/v1/operations/op-2") == (
        404, cni.UNKNOWN_CONTAINER, "no operation 'op-2'")


def test_an_agent_without_services_has_no_service_routes(api):
    assert error(api, "GET", "/v1/services") == (
        404, cni.AGENT_FAILURE, "no route for GET /v1/services: this agent serves no services")


def test_the_endpoint_request_must_name_the_endpoint_of_its_path():
    # the real manager: the one rule the document cannot state is its own
    api = Api(EndpointManager(None, None, None, logging.getLogger("test")), InlineWorker(),
              dict)
    body = {"containerID": "ctr-9", "ifname": "eth0", "netns": "/x", "network": "n",
            "chainingMode": "generic-veth"}
    assert error(api, "PUT", "/v1/endpoints/%s" % KEY, body) == (
        400, cni.INVALID_NETWORK_CONFIG,
        "endpoint request for ctr-9:eth0 sent to key 'ctr-1:eth0'")


# --- bad requests -------------------------------------------------------------

ENDPOINT = {"containerID": "ctr-1", "ifname": "eth0", "netns": "/var/run/netns/pod",
            "network": "podnet", "chainingMode": "generic-veth"}


@pytest.mark.parametrize("method, url, body, message", [
    ("PUT", "/v1/endpoints/bad!key", ENDPOINT,
     "invalid endpoint key 'bad!key': expected CONTAINERID:IFNAME"),
    ("GET", "/v1/endpoints/ctr:" + "x" * 16,
     None, "invalid endpoint key 'ctr:xxxxxxxxxxxxxxxx': expected CONTAINERID:IFNAME"),
    ("PUT", "/v1/endpoints/" + KEY, None, "endpoint request: a JSON body is required"),
    ("PUT", "/v1/endpoints/" + KEY, ["x"], "endpoint request must be an object, not a list"),
    ("PUT", "/v1/endpoints/" + KEY, {"containerID": "ctr-1"},
     "endpoint request: 'ifname' is missing (must be a non-empty string)"),
    ("PUT", "/v1/endpoints/" + KEY, dict(ENDPOINT, netns=""),
     "endpoint request: 'netns' must be a non-empty string, not ''"),
    ("PUT", "/v1/endpoints/" + KEY, dict(ENDPOINT, k8s=[]),
     "endpoint request: 'k8s' must be an object, not a list"),
    ("PUT", "/v1/endpoints/" + KEY, dict(ENDPOINT, hostInterfaceHint=""),
     "endpoint request: 'hostInterfaceHint' must be a non-empty string or null, not ''"),
    ("PUT", "/v1/endpoints/" + KEY, dict(ENDPOINT, prevResultAddresses=["10.0.0.2/24", 7]),
     "endpoint request: 'prevResultAddresses[1]' must be a string, not 7"),
    ("POST", "/v1/endpoints/%s/check" % KEY, {"addresses": "10.0.0.2"},
     "check request: 'addresses' must be a list of strings or null, not '10.0.0.2'"),
    ("PUT", "/v1/endpoints/%s/labels" % KEY, {"add": [1]},
     "labels request: 'add[0]' must be a string, not 1"),
    ("POST", "/v1/gc", ["not", "an", "object"], "gc request must be an object, not a list"),
    ("POST", "/v1/gc", {"network": "n", "valid": [{"ifname": "eth0"}]},
     "gc request: 'valid[0].containerID' is missing (must be a string)"),
    ("POST", "/v1/policy", {"files": [{"source": "a.yaml", "text": 5}]},
     "policy import: 'files[0].text' must be a string, not 5"),
    ("DELETE", "/v1/policy", None,
     "policy delete needs ?name=NAME[&namespace=NS], ?source=FILE or ?all=1"),
    ("GET", "/v1/monitor?type=loud", None,
     "invalid monitor type 'loud': expected one of 'all', 'drop', 'lb'"),
    ("PUT", "/v1/services", {"services": [{"frontend": 80}]},
     "service update: 'services[0].frontend' must be a string or an object, not 80"),
    ("POST", "/v1/services/import", {"files": "a.yaml"},
     "service import: 'files' must be a list of objects, not 'a.yaml'"),
])
def test_bad_requests_get_the_error_body_naming_what_was_wrong(api, method, url, body,
                                                                message):
    api.services = object()  # routes exist; nothing reaches it
    assert error(api, method, url, body) == (400, cni.INVALID_NETWORK_CONFIG, message)
    assert api.manager.calls == []


def test_unknown_routes_and_methods_are_the_agents_errors_not_a_missing_container(api):
    assert error(api, "GET", "/v2/nothing") == (
        404, cni.AGENT_FAILURE, "no such API path '/v2/nothing' (the API lives under /v1)")
    assert error(api, "GET", "/v1/endpoints/%s/nothing" % KEY) == (
        404, cni.AGENT_FAILURE, "no route for GET /v1/endpoints/%s/nothing" % KEY)
    assert error(api, "POST", "/v1/endpoints/%s" % KEY) == (
        405, cni.AGENT_FAILURE,
        "method POST is not allowed on /v1/endpoints/{key}: use DELETE, GET, PUT")


def test_checking_an_endpoint_request_costs_well_under_a_millisecond(api):
    body = dict(ENDPOINT, k8s={"namespace": "default", "podName": "web-0", "podUID": "u-1"},
                prevResultAddresses=["10.0.0.2/24"], hostInterfaceHint=None,
                netconfArgs={"cni": {"labels": [{"key": "app", "value": "web"}]}})
    router, n = api.router, 2000
    started = time.perf_counter()
    for _ in range(n):
        router.route("PUT", "/v1/endpoints/" + KEY, body)
    per_request = (time.perf_counter() - started) / n
    assert per_request < 1e-3, "%.3f ms per endpoint PUT" % (per_request * 1e3)


# --- the HTTP server on a real Unix socket --------------------------------------

@pytest.fixture
def served(api, tmp_path):
    log = logging.getLogger("test-api")
    srv = UnixApiServer(str(tmp_path / "agent.sock"), api, log)
    srv.server_bind()
    srv.server_activate()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield srv.socket_path
    srv.shutdown()
    srv.server_close()
    srv.remove_socket()


def raw(path, request):
    """Send bytes, return (status, headers text, decoded body)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(path)
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return int(head.split()[1]), head.decode(), json.loads(body) if body else None


def test_a_method_on_a_known_path_is_405_with_the_allowed_methods(served):
    status, head, body = raw(served, b"PATCH /v1/endpoints/ctr-1:eth0 HTTP/1.0\r\n\r\n")
    assert status == 405 and "\r\nAllow: DELETE, GET, PUT" in head
    assert body["error"]["code"] == cni.AGENT_FAILURE


@pytest.mark.parametrize("length", [b"abc", b"-5", b"1e3"])
def test_a_content_length_that_is_not_a_number_is_refused_not_a_500_or_a_hang(served, length):
    # Regression: int() of it was a 500; "-5" read to an EOF the client never sends.
    status, _, body = raw(served, b"PUT /v1/endpoints/ctr-1:eth0 HTTP/1.0\r\n"
                                  b"Content-Length: " + length + b"\r\n\r\n{}")
    assert status == 400 and "invalid Content-Length" in body["error"]["message"]


def test_a_body_nested_too_deeply_is_refused_not_a_500(served):
    deep = b"[" * 100000 + b"]" * 100000
    status, _, body = raw(served, b"POST /v1/gc HTTP/1.0\r\nContent-Length: %d\r\n\r\n"
                          % len(deep) + deep)
    assert status == 400 and "nested too deeply" in body["error"]["message"]


def test_a_bug_answers_500_with_the_error_body(api, served):
    def broken():
        raise KeyError("oops")
    api.manager.list = broken
    status, _, body = raw(served, b"GET /v1/endpoints HTTP/1.0\r\n\r\n")
    assert status == 500 and body["error"]["code"] == cni.AGENT_FAILURE
    assert body["error"]["message"] == "internal agent error: 'oops'"


def test_an_unknown_chaining_mode_is_refused(api):
    body = dict(ENDPOINT, chainingMode="nope")
    status, code, message = error(api, "PUT", "/v1/endpoints/" + KEY, body)
    assert (status, code) == (400, cni.INVALID_NETWORK_CONFIG)
    assert "chainingMode" in message and "'generic-veth'" in message
