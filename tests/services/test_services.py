"""Services: validation, batches, persistence (real sqlite store), Kubernetes import.

The datapath is a hand-written recorder of the `datapath.lb` calls; the map
side is tested against the kernel in tests/services/test_lb_datapath.py.
"""

import logging
import textwrap

import pytest

from agent import k8s_services
from agent.errors import BadRequest, NotFound
from agent.services import ServiceManager, normalize
from agent.store import Store

pytestmark = pytest.mark.unit


class RecordingLb:
    def __init__(self):
        self.maps = {}  # frontend key -> service as last written
        self.calls = []

    def upsert(self, svc):
        self.calls.append(("upsert", svc["key"]))
        self.maps[svc["key"]] = svc

    def delete(self, svc):
        self.calls.append(("delete", svc["key"]))
        self.maps.pop(svc["key"])

    def sync(self, services):
        self.calls.append(("sync", len(services)))
        self.maps = {s["key"]: s for s in services}


class RecordingDatapath:
    def __init__(self):
        self.lb = RecordingLb()


@pytest.fixture
def mgr(tmp_path):
    store = Store(str(tmp_path))
    dp = RecordingDatapath()
    m = ServiceManager(store, dp, logging.getLogger("test"))
    m.lb, m.store, m.path = dp.lb, store, tmp_path
    yield m
    store.close()


def test_normalize_forms():
    svc = normalize({"frontend": "10.96.0.1:80", "backends": "10.1.0.2:8080, 10.1.0.3:8080@3"})
    assert svc["key"] == "10.96.0.1:80/tcp"
    assert svc["backends"] == [{"address": "10.1.0.2", "port": 8080, "weight": 1},
                               {"address": "10.1.0.3", "port": 8080, "weight": 3}]
    v6 = normalize({"frontend": "[fd00::a]:53/UDP", "backends": ["[fd00::1]:5353"]})
    assert v6["key"] == "[fd00::a]:53/udp" and v6["backends"][0]["address"] == "fd00::1"
    empty = normalize({"frontend": "10.96.0.2:80", "backends": ""})
    assert empty["backends"] == []


@pytest.mark.parametrize("svc, message", [
    ({"frontend": "10.96.0.300:80", "backends": []}, "'10.96.0.300' is not an IP address"),
    ({"frontend": "10.96.0.1:0", "backends": []}, "port must be 1-65535"),
    ({"frontend": "10.96.0.1:65536", "backends": []}, "port must be 1-65535"),
    ({"frontend": "10.96.0.1", "backends": []}, "want IP:PORT"),
    ({"frontend": "10.96.0.1:80/sctp", "backends": []}, "protocol must be tcp or udp"),
    ({"frontend": "10.96.0.1:80", "backends": "10.1.0.1:99999"}, "port must be 1-65535"),
    ({"frontend": "10.96.0.1:80", "backends": "[fd00::1]:80"}, "not of the frontend's address family"),
    ({"frontend": "10.96.0.1:80", "backends": "10.1.0.1:80,10.1.0.1:80"}, "listed twice"),
    ({"frontend": "10.96.0.1:80", "backends": "10.1.0.1:80@101"}, "weight must be 0-100"),
    ({"frontend": "10.96.0.1:80", "backends": [], "type": "LoadBalancer"}, "invalid type"),
    ({"frontend": "0.0.0.0:80", "backends": []}, "only a NodePort frontend"),
    ({"backends": []}, "needs a 'frontend'"),
])
def test_bad_services_are_refused_with_a_message(svc, message):
    with pytest.raises(BadRequest) as err:
        normalize(svc)
    assert message in err.value.message


def test_upsert_persists_and_restores(mgr):
    out = mgr.upsert([{"frontend": "10.96.0.1:80", "backends": "10.1.0.2:8080"},
                      {"frontend": "10.96.0.2:53/udp", "backends": "10.1.0.3:53"}])
    assert [s["id"] for s in out] == [1, 2]
    again = ServiceManager(mgr.store, RecordingDatapath(), logging.getLogger("test"))
    assert again.restore() == 2
    assert again.list() == mgr.list()
    assert again.get("10.96.0.1:80/tcp")["backends"][0]["port"] == 8080


def test_changing_one_service_writes_only_it(mgr):
    mgr.upsert([{"frontend": "10.96.0.%d:80" % i, "backends": "10.1.0.2:8080"} for i in range(1, 6)])
    mgr.lb.calls.clear()
    mgr.upsert([{"frontend": "10.96.0.3:80", "backends": "10.1.0.2:8080,10.1.0.4:8080"},
                {"frontend": "10.96.0.4:80", "backends": "10.1.0.2:8080"}])  # unchanged
    assert mgr.lb.calls == [("upsert", "10.96.0.3:80/tcp")]
    assert mgr.get("10.96.0.3:80/tcp")["id"] == 3  # an update keeps the id


def test_a_bad_batch_changes_nothing(mgr):
    mgr.upsert([{"frontend": "10.96.0.1:80", "backends": "10.1.0.2:8080"}])
    before = mgr.list()
    with pytest.raises(BadRequest, match="given twice"):
        mgr.upsert([{"frontend": "10.96.0.5:80", "backends": ""},
                    {"frontend": "10.96.0.5:80/tcp", "backends": ""}])
    with pytest.raises(BadRequest, match="port must be 1-65535"):
        mgr.upsert([{"frontend": "10.96.0.6:80", "backends": ""},
                    {"frontend": "10.96.0.7:80", "backends": "10.1.0.1:0"}])
    assert mgr.list() == before
    assert [s["key"] for s in mgr.store.services()] == ["10.96.0.1:80/tcp"]


def test_same_address_and_port_with_another_protocol(mgr):
    mgr.upsert([{"frontend": "10.96.0.10:53/udp", "backends": "10.1.0.2:53", "name": "kube-system/dns"}])
    # the same named service may carry both protocols (DNS) ...
    mgr.upsert([{"frontend": "10.96.0.10:53/tcp", "backends": "10.1.0.2:53", "name": "kube-system/dns"}])
    # ... another service may not
    with pytest.raises(BadRequest, match="used with protocols tcp/udp by different services"):
        mgr.upsert([{"frontend": "10.96.0.11:53/udp", "backends": "", "name": "a/b"},
                    {"frontend": "10.96.0.11:53/tcp", "backends": ""}])
    assert "10.96.0.11:53/udp" not in {s["key"] for s in mgr.list()}


def test_delete_by_frontend_name_and_all(mgr):
    mgr.upsert([{"frontend": "10.96.0.10:53/udp", "backends": "", "name": "kube-system/dns"},
                {"frontend": "10.96.0.10:53/tcp", "backends": "", "name": "kube-system/dns"},
                {"frontend": "10.96.0.1:80", "backends": ""},
                {"frontend": "10.96.0.2:80", "backends": ""}])
    assert mgr.delete(frontend="10.96.0.1:80") == ["10.96.0.1:80/tcp"]
    assert sorted(mgr.delete(name="kube-system/dns")) == ["10.96.0.10:53/tcp", "10.96.0.10:53/udp"]
    with pytest.raises(NotFound):
        mgr.delete(frontend="10.96.0.1:80")
    assert mgr.delete(everything=True) == ["10.96.0.2:80/tcp"]
    assert mgr.store.services() == [] and mgr.lb.maps == {}


def test_ids_are_reused_only_after_delete(mgr):
    mgr.upsert([{"frontend": "10.96.0.1:80", "backends": ""}, {"frontend": "10.96.0.2:80", "backends": ""}])
    mgr.delete(frontend="10.96.0.1:80")
    assert mgr.upsert([{"frontend": "10.96.0.3:80", "backends": ""}])[0]["id"] == 1


K8S = textwrap.dedent("""
    apiVersion: v1
    kind: Service
    metadata: {name: web, namespace: shop}
    spec:
      type: NodePort
      clusterIP: 10.96.1.1
      ports:
      - {name: http, port: 80, targetPort: 8080, protocol: TCP, nodePort: 30080}
      - {name: dns, port: 53, protocol: UDP}
    ---
    apiVersion: discovery.k8s.io/v1
    kind: EndpointSlice
    metadata:
      name: web-abc
      namespace: shop
      labels: {kubernetes.io/service-name: web}
    addressType: IPv4
    ports:
    - {name: http, port: 8080, protocol: TCP}
    - {name: dns, port: 5353, protocol: UDP}
    endpoints:
    - addresses: [10.1.0.2]
      conditions: {ready: true}
    - addresses: [10.1.0.3]
    - addresses: [10.1.0.4]
      conditions: {ready: false}
    ---
    apiVersion: v1
    kind: Service
    metadata: {name: old}
    spec:
      clusterIP: 10.96.1.2
      ports: [{port: 81}]
    ---
    apiVersion: v1
    kind: Endpoints
    metadata: {name: old}
    subsets:
    - addresses: [{ip: 10.1.0.9}]
      ports: [{port: 9090}]
    ---
    apiVersion: v1
    kind: Service
    metadata: {name: headless}
    spec: {clusterIP: None, ports: [{port: 80}]}
""")


def test_k8s_import():
    out = k8s_services.parse_files([{"source": "web.yaml", "text": K8S}])
    by_fe = {s["frontend"]: s for s in out}
    assert set(by_fe) == {"10.96.1.1:80/tcp", "0.0.0.0:30080/tcp", "10.96.1.1:53/udp", "10.96.1.2:81/tcp"}
    assert by_fe["10.96.1.1:80/tcp"]["backends"] == ["10.1.0.2:8080", "10.1.0.3:8080"]
    assert by_fe["0.0.0.0:30080/tcp"]["type"] == "NodePort"
    assert by_fe["10.96.1.1:53/udp"]["backends"] == ["10.1.0.2:5353", "10.1.0.3:5353"]
    assert by_fe["10.96.1.2:81/tcp"] == {"frontend": "10.96.1.2:81/tcp", "type": "ClusterIP",
                                         "name": "default/old", "backends": ["10.1.0.9:9090"]}
    assert all(normalize(s) for s in out)


@pytest.mark.parametrize("text, message", [
    ("kind: Service\nmetadata: {name: a}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 80, protocol: SCTP}]}",
     "x.yaml: Service default/a: protocol SCTP is not supported"),
    ("kind: ConfigMap\nmetadata: {name: a}", "x.yaml: ConfigMap default/a: unsupported kind"),
    ("kind: EndpointSlice\nmetadata: {name: a}", "no label kubernetes.io/service-name"),
    ("kind: Service\nmetadata: {name: a\n", "x.yaml:3: not YAML"),
])
def test_k8s_import_errors_name_the_file(text, message):
    with pytest.raises(BadRequest) as err:
        k8s_services.parse_files([{"source": "x.yaml", "text": text}])
    assert message in err.value.message


def test_translation_events_decode_and_print():
    import socket

    from cli.observe import format_event
    from datapath import events

    def raw(reason, ifindex):
        return events.EVENT.pack(2_000_000_000, 7, 0, 0, socket.inet_aton("10.240.0.5").ljust(16, b"\0"),
                               socket.inet_aton("10.96.0.1").ljust(16, b"\0"), 40000, 80, 6, 4, 2, reason,
                               ifindex, 60, 8080, 3, socket.inet_aton("10.241.0.9").ljust(16, b"\0"))

    packet = events.event_decode(raw(events.EVENT_LB_XLATE, 12), 0.0)
    assert packet["type"] == "lb" and packet["path"] == "packet"
    assert (packet["src"], packet["frontend"], packet["backend"], packet["backendPort"]) == (
        "10.240.0.5", "10.96.0.1", "10.241.0.9", 8080)
    assert format_event(packet).endswith(
        "LB ep 7 service 3: 10.240.0.5:40000 -> 10.96.0.1:80 translated to 10.241.0.9:8080 TCP")
    sock = events.event_decode(raw(events.EVENT_LB_SOCK, 4242), 0.0)
    assert sock["path"] == "socket" and sock["pid"] == 4242 and "src" not in sock
    assert format_event(sock).endswith("LB socket pid 4242 service 3: 10.96.0.1:80 translated to 10.241.0.9:8080 TCP")
