"""The cluster routes in process, without etcd: keys named relative to the
prefix or absolutely, values shown as text or escaped, the answers of an
agent that is in no cluster, and requests refused before etcd is asked.
tests/cli/test_cluster.py runs them against a real etcd and agent."""

import types

import pytest

from agent.api_cluster import absolute, escaped, render
from agent.errors import AgentError
from agent.kvstore.etcd import Item
from agent.kvstore.layout import Layout
from agent.server import Api
from tests.apicontract import check_response

pytestmark = pytest.mark.unit

ROOT = "cilium-cni/"


class InlineWorker:
    def submit(self, fn, *args, wait=60.0):
        return fn(*args)


class NoEtcd:
    """Any call is a test failure: these requests must be refused first."""

    def __getattr__(self, name):
        raise AssertionError("etcd was asked (%s) for a request that should be refused" % name)


def call(api, url):
    try:
        status, out = api.handle("GET", url, None)
    except AgentError as exc:
        status, out = exc.status, exc.to_body()
    check_response("GET", url, status, out)
    return status, out


@pytest.mark.parametrize("given, key", [
    ("nodes/v1/a", "cilium-cni/nodes/v1/a"),
    ("/nodes/v1/a", "cilium-cni/nodes/v1/a"),
    ("cilium-cni/nodes/v1/a", "cilium-cni/nodes/v1/a"),
    ("cilium-cni", "cilium-cni/"),
    ("cilium-cni/", "cilium-cni/"),
    ("", "cilium-cni/"),
    ("cilium-cnix/a", "cilium-cni/cilium-cnix/a"),  # not the prefix: relative
])
def test_keys_are_relative_to_the_prefix_unless_they_start_with_it(given, key):
    assert absolute(ROOT, given) == key


def test_values_are_text_or_escaped():
    item = Item("cilium-cni/x", b'{"v":1}', 5, 7, 0x694d)
    assert render(item, None) == {
        "key": "cilium-cni/x", "value": '{"v":1}', "encoding": "text", "size": 7,
        "truncated": False, "createRevision": 5, "modRevision": 7, "lease": "694d"}
    binary = render(Item("k", b"a\\\xff\x00\n", 1, 1, 0), None)
    assert (binary["value"], binary["encoding"], binary["lease"]) == (
        "a\\x5c\\xff\\x00\\x0a", "escaped", None)
    assert escaped(b"ok ~") == "ok ~"


def test_a_listing_cuts_values_even_inside_a_character():
    text = ("é" * 600).encode()  # 1200 bytes, 2 a character: 1024 ends between two
    cut = render(Item("k", text, 1, 1, 0), 1024)
    assert cut["encoding"] == "text" and cut["truncated"] is True and cut["size"] == 1200
    assert cut["value"] == "é" * 512
    odd = render(Item("k", b"x" + text, 1, 1, 0), 1024)  # 1024 ends mid-character
    assert odd["encoding"] == "text" and odd["value"] == "x" + "é" * 511


def test_an_agent_in_no_cluster_says_which_setting_is_missing():
    api = Api(None, InlineWorker(), lambda: {})
    for url in ("/v1/nodes", "/v1/kvstore", "/v1/kvstore?key=nodes/v1/a"):
        status, out = call(api, url)
        assert status == 404 and out["error"]["code"] == 101
        assert "this node is not in a cluster" in out["error"]["message"]
        assert "`kvstore: etcd`" in out["error"]["message"]


@pytest.mark.parametrize("url, words", [
    ("/v1/kvstore?key=a&prefix=b", "give ?key=KEY or ?prefix=PREFIX, not both"),
    ("/v1/kvstore?key=/", "?key= is empty"),
    ("/v1/kvstore?limit=0", "limit must be a number from 1 to 10000, not '0'"),
    ("/v1/kvstore?limit=20000", "not '20000'"),
    ("/v1/kvstore?limit=ten", "kvstore limit"),  # the document's pattern
])
def test_bad_requests_are_refused_before_etcd_is_asked(url, words):
    cluster = types.SimpleNamespace(keys=Layout("cilium-cni"), etcd=NoEtcd())
    api = Api(None, InlineWorker(), lambda: {}, cluster=cluster)
    status, out = call(api, url)
    assert status == 400 and words in out["error"]["message"], out
