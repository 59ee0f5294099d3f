"""The stand-in API server speaks the wire protocol, checked with raw HTTP:
lists with a resourceVersion and pages, a chunked watch stream of
newline-delimited events with bookmarks, 410 Gone as the real server gives
it, cut connections, a restart on the same port, and the refusal of
objects the real server would refuse."""

import http.client
import json

import pytest

from tests.k8s.apiserver import ApiServer
from tests.k8s.objects import ccnp, cnp, pod
from tests.k8s.schemas import Invalid

pytestmark = pytest.mark.unit


def get(server, path, token=True):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.request("GET", path, headers={"Authorization": "Bearer " + server.token} if token
                 else {})
    return conn.getresponse()


def events(resp, count):
    return [json.loads(resp.readline()) for _ in range(count)]


def test_list_has_the_resource_version_and_items_without_kind(apiserver):
    apiserver.create(pod("a"))
    apiserver.create(pod("b", namespace="other"))
    resp = get(apiserver, "/api/v1/pods")
    body = json.loads(resp.read())
    assert resp.status == 200 and body["kind"] == "PodList"
    assert body["metadata"]["resourceVersion"] == str(apiserver.resource_version)
    assert [i["metadata"]["name"] for i in body["items"]] == ["a", "b"]
    assert "kind" not in body["items"][0]
    one = json.loads(get(apiserver, "/api/v1/namespaces/other/pods").read())
    assert [i["metadata"]["name"] for i in one["items"]] == ["b"]
    assert get(apiserver, "/api/v1/pods", token=False).status == 401


def test_paged_list_and_an_expired_continue_token_is_410(apiserver):
    for i in range(5):
        apiserver.create(pod("p%d" % i))
    first = json.loads(get(apiserver, "/api/v1/pods?limit=2").read())
    assert len(first["items"]) == 2 and first["metadata"]["remainingItemCount"] == 3
    apiserver.create(pod("late"))  # not in the listing's snapshot
    token = first["metadata"]["continue"]
    rest = json.loads(get(apiserver, "/api/v1/pods?limit=10&continue=" + token).read())
    assert [i["metadata"]["name"] for i in rest["items"]] == ["p2", "p3", "p4"]
    assert rest["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    apiserver.expire_continue_tokens()
    resp = get(apiserver, "/api/v1/pods?limit=10&continue=" + token)
    assert resp.status == 410 and json.loads(resp.read())["reason"] == "Expired"


def test_watch_streams_chunked_events_and_bookmarks(apiserver):
    rv = apiserver.create(pod("a"))["metadata"]["resourceVersion"]
    resp = get(apiserver, "/api/v1/pods?watch=1&allowWatchBookmarks=true&resourceVersion=" + rv)
    assert resp.status == 200 and resp.getheader("Transfer-Encoding") == "chunked"
    apiserver.create(pod("b"))
    apiserver.update(pod("b", labels={"x": "y"}))
    apiserver.delete("Pod", "a")
    apiserver.create(cnp("other-kind"))   # another resource: not in this watch
    apiserver.bookmark()
    got = events(resp, 4)
    assert [(e["type"], e["object"]["metadata"].get("name")) for e in got] == [
        ("ADDED", "b"), ("MODIFIED", "b"), ("DELETED", "a"), ("BOOKMARK", None)]
    rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in got]
    assert rvs == sorted(rvs) and rvs[-1] == apiserver.resource_version
    assert got[1]["object"]["metadata"]["generation"] == 1  # labels are not the spec
    assert got[2]["object"]["metadata"]["name"] == "a"       # the last state of a


def test_a_watch_without_resource_version_starts_with_every_object(apiserver):
    apiserver.create(ccnp("x"))
    resp = get(apiserver, "/apis/cilium.io/v2/ciliumclusterwidenetworkpolicies?watch=true")
    (ev,) = events(resp, 1)
    assert ev["type"] == "ADDED" and ev["object"]["metadata"]["name"] == "x"


def test_too_old_resource_version_is_an_error_event_with_410():
    server = ApiServer(history=3).start()
    try:
        for i in range(5):
            server.create(pod("p%d" % i))
        resp = get(server, "/api/v1/pods?watch=1&resourceVersion=1")
        assert resp.status == 200
        (ev,) = events(resp, 1)
        assert ev["type"] == "ERROR" and ev["object"]["code"] == 410
        assert ev["object"]["kind"] == "Status" and ev["object"]["reason"] == "Expired"
        assert resp.read() == b""   # the stream then ends
        resp = get(server, "/api/v1/pods?watch=1&resourceVersion=%d" % (server.resource_version - 2))
        server.create(pod("p9"))
        assert events(resp, 1)[0]["type"] == "ADDED"   # recent enough: events follow
        server.fail_next_watches()
        resp = get(server, "/api/v1/pods?watch=1&resourceVersion=%d" % server.resource_version)
        assert events(resp, 1)[0]["object"]["code"] == 410
    finally:
        server.stop()


def test_dropped_watch_ends_without_the_chunked_terminator(apiserver):
    resp = get(apiserver, "/api/v1/pods?watch=1&resourceVersion=1")
    apiserver.drop_watches()
    with pytest.raises(http.client.IncompleteRead):
        resp.read()


def test_restart_on_the_same_port_keeps_the_store(apiserver):
    apiserver.create(pod("a"))
    port = apiserver.port
    apiserver.stop()
    with pytest.raises(ConnectionRefusedError):
        get(apiserver, "/api/v1/pods")
    apiserver.start()
    assert apiserver.port == port
    assert len(json.loads(get(apiserver, "/api/v1/pods").read())["items"]) == 1


@pytest.mark.parametrize("bad, why", [
    (dict(pod("x"), spec={"containers": [{"name": "c", "image": "i", "imagePullPolicy": 3}]}),
     "imagePullPolicy"),
    (dict(pod("x"), spec={"containers": [{"name": "c", "image": "i", "bogus": 1}]}), "bogus"),
    (pod("Not_A_Name"), "DNS-1123"),
    ({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
      "metadata": {"name": "np"}, "spec": {"podSelector": {}, "policyTypes": "Ingress"}},
     "policyTypes"),
    (dict(cnp("p"), spec={"endpointSelector": {}, "ingres": []}), "ingres"),
    (dict(cnp("p"), spec={"endpointSelector": {"matchLabels": {"a": 1}}}), "1"),
    ({k: v for k, v in cnp("p").items() if k != "spec"}, "spec"),
    (dict(ccnp("c"), metadata={"name": "c", "namespace": "default"}), "cluster-scoped"),
    ({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}}, "serves no"),
])
def test_objects_the_real_server_would_refuse_are_refused(apiserver, bad, why):
    with pytest.raises(Invalid, match=why):
        apiserver.create(bad)
    assert apiserver.resource_version == 1


def test_crd_manifests_are_valid_custom_resource_definitions():
    import kubernetes_validate

    from tests.k8s import schemas
    for crd, _ in schemas.crds().values():
        kubernetes_validate.validate(crd, schemas.K8S_VERSION, strict=True)
    assert sorted(k for _, k in schemas.crds()) == ["CiliumClusterwideNetworkPolicy",
                                                    "CiliumNetworkPolicy"]
