"""How `status` and `check` word the kvstore, in process: from `kvstore`
sections of /v1/status as the document declares them (checked here against
its Kvstore schema), and `check --agent-config` on config files.
tests/cli/test_cluster.py sees the same from a real agent and etcd."""

import pytest

from agent.config import load
from cli.check import check_agent_config, check_kvstore
from cli.cluster import REMEDY, kvstore_health, kvstore_lines
from cli.observe import format_status
from tests.apicontract import ROUTER

pytestmark = pytest.mark.unit

UP = {"backend": "etcd", "node": "node-a", "prefix": "cilium-cni/",
      "endpoints": ["http://10.0.0.1:2379", "http://10.0.0.2:2379"], "reachable": True,
      "leader": "8e9e05c52164694d", "latencyMs": 1.27, "lastError": None, "lastErrorAt": None,
      "version": "3.4.23", "lease": "694d8c3e1a2b", "pendingWrites": 0, "revision": 42,
      "syncedAt": 1700000000.0, "watchEvents": 7, "relists": 1, "gcLeader": True, "nodes": 3,
      "policyRevision": 5}
WHERE = "etcd at http://10.0.0.1:2379, http://10.0.0.2:2379"
DOWN = dict(UP, reachable=False, leader=None, latencyMs=None, lastErrorAt=1700000100.0,
            lastError=WHERE + ": failed to connect to all addresses (UNAVAILABLE)")
del DOWN["version"]  # the agent knows it only while etcd answers
STATUS = {"version": "1.0", "pid": 1, "uptimeSeconds": 5, "socket": "/run/a.sock",
          "bpfRoot": "/sys/fs/bpf/x", "endpoints": 0, "policyRevision": 0, "policyRules": 0,
          "metricsAddress": None, "queueDepth": 0}


@pytest.mark.parametrize("kv", [UP, DOWN], ids=["up", "down"])
def test_the_samples_are_what_the_document_declares(kv):
    assert not list(ROUTER.validator("/components/schemas/Kvstore").iter_errors(kv))


def test_reachable_etcd_in_one_line():
    ok, detail, remedy = kvstore_health(UP)
    assert ok and remedy == ""
    assert detail == ("%s reachable (etcd 3.4.23), leader 8e9e05c52164694d, 1.3 ms, node node-a, "
                      "3 node(s), revision 42" % WHERE)
    ok, detail, _ = kvstore_health(dict(UP, pendingWrites=4))
    assert ok and detail.endswith(", 4 write(s) pending")


def test_unreachable_etcd_names_the_cause_once_and_the_remedy():
    ok, detail, remedy = kvstore_health(DOWN)
    assert not ok
    assert detail == "%s unreachable: failed to connect to all addresses (UNAVAILABLE)" % WHERE
    assert remedy == REMEDY and "new label sets fail with code 11" in remedy
    _, detail, _ = kvstore_health(dict(DOWN, lastError=None))
    assert detail.endswith("unreachable: no answer")


def test_status_shows_the_kvstore():
    text = format_status(dict(STATUS, kvstore=DOWN))
    assert any(ln.startswith("kvstore:") and "UNREACHABLE: %s unreachable" % WHERE in ln
               for ln in text)
    assert any(ln.strip() == "remedy: " + REMEDY for ln in text)
    up = format_status(dict(STATUS, kvstore=UP))
    assert not any("remedy" in ln for ln in up)
    assert any("prefix cilium-cni/, lease 694d8c3e1a2b" in ln and "1 re-list(s)" in ln
               and "collects unused identities" in ln for ln in up)
    alone = format_status(dict(STATUS, kvstore=None))
    assert "kvstore:       none (this node alone: identities in its own store)" in alone
    assert not any(ln.startswith("kvstore") for ln in format_status(STATUS))  # older agent


def test_a_reachable_etcd_still_shows_its_last_error():
    rows = kvstore_lines(dict(UP, lastError="etcd at x: no leader", lastErrorAt=1700000100.0))
    assert any(text.startswith("last error (") and text.endswith("): etcd at x: no leader")
               for _, text in rows)


def _config(tmp_path, text):
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    return str(path)


def test_check_reads_the_agent_config(tmp_path):
    path = _config(tmp_path, "kvstore: etcd\nkvstore-endpoints: [http://10.0.0.1:2379]\n")
    (line,), config = check_agent_config(path)
    assert line.ok and config.kvstore == "etcd"
    assert line.detail == "%s: valid; kvstore etcd at http://10.0.0.1:2379, prefix cilium-cni" % path
    (line,), config = check_agent_config(_config(tmp_path, "kvstore: etcd\n"))
    assert not line.ok and config is None
    assert "kvstore: etcd needs kvstore-endpoints" in line.detail
    assert "conf/agent.yaml" in line.remedy
    (line,), _ = check_agent_config(_config(tmp_path, "kvstore-endpionts: []\n"))
    assert not line.ok and "did you mean 'kvstore-endpoints'?" in line.detail
    (line,), _ = check_agent_config(str(tmp_path / "absent.yaml"))
    assert not line.ok and "cannot read" in line.detail


def test_check_compares_the_agent_with_its_config(tmp_path):
    clustered = load(_config(tmp_path, "kvstore: etcd\nkvstore-endpoints: [http://a:2379]\n"))
    (line,) = check_kvstore(None, clustered)
    assert not line.ok and line.detail == ("the agent runs without a kvstore, yet its config "
                                           "says kvstore: etcd")
    (line,) = check_kvstore(UP, load(None))
    assert not line.ok and "runs with etcd, yet its config says no kvstore" in line.detail
    lines = list(check_kvstore(UP, load(_config(
        tmp_path, "kvstore: etcd\nkvstore-endpoints: [http://a:2379]\nkvstore-prefix: other\n"))))
    assert [ln.ok for ln in lines] == [True, False]
    assert lines[1].detail == "the agent uses cilium-cni/, its config says other"
    assert [ln.ok for ln in check_kvstore(UP, clustered)] == [True]
    assert [ln.ok for ln in check_kvstore(DOWN)] == [False]
    assert list(check_kvstore(None)) == []  # an agent alone, no config read: nothing to say
