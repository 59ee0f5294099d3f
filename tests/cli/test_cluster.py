"""The operator's view of a cluster: `node list`, `kvstore list|get`,
`status`, `check` and the metrics of an agent with `kvstore: etcd`, against
a real etcd (one member on loopback ports of this file's own, data in
tmp_path, stopped by pid) and a real agent; then etcd stopped: status and
check say it is unreachable, with the remedy.
"""

import json
import os
import shutil
import subprocess
import time
import urllib.request
import uuid

import pytest

from tests import lab

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("require_root")]

CLIENT_PORT, PEER_PORT = 23379, 23380  # this file's own: other tests' etcds use others
ENDPOINT = "http://127.0.0.1:%d" % CLIENT_PORT


class Etcd:
    """One etcd member on loopback, its data in `data_dir`; ours to stop, by pid."""

    def __init__(self, data_dir):
        self.data_dir = data_dir
        self.proc = None

    def log(self):
        with open(self.data_dir + ".log", "rb") as f:
            return f.read()[-2000:].decode("utf-8", "replace")

    def start(self, timeout=30):
        with open(self.data_dir + ".log", "ab") as log:
            self.proc = subprocess.Popen(
                [shutil.which("etcd") or "/usr/bin/etcd", "--name", "wtcli", "--data-dir",
                 self.data_dir, "--listen-client-urls", ENDPOINT, "--advertise-client-urls",
                 ENDPOINT, "--listen-peer-urls", "http://127.0.0.1:%d" % PEER_PORT,
                 "--initial-advertise-peer-urls", "http://127.0.0.1:%d" % PEER_PORT,
                 "--initial-cluster", "wtcli=http://127.0.0.1:%d" % PEER_PORT],
                stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("etcd exited %d: %s" % (self.proc.returncode, self.log()))
            try:
                with urllib.request.urlopen(ENDPOINT + "/health", timeout=1) as resp:
                    if json.load(resp).get("health") == "true":
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("etcd did not become healthy on %s" % ENDPOINT)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def etcd(tmp_path):
    server = Etcd(str(tmp_path / "etcd"))
    try:
        yield server.start()
    finally:
        server.stop()


def cli(agent, *args, check=True):
    return lab.cli(agent, *args, check=check)


def wait_for(what, fn, timeout=20.0):
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got or time.monotonic() > deadline:
            assert got, "no %s within %.0f s" % (what, timeout)
            return got
        time.sleep(0.1)


def scrape(agent):
    address = agent.api("GET", "/v1/status")[1]["metricsAddress"]
    with urllib.request.urlopen("http://%s/metrics" % address, timeout=20) as resp:
        lines = resp.read().decode().splitlines()
    return {ln.split()[0]: float(ln.split()[1]) for ln in lines
            if ln.startswith("cilium_cni_kvstore_")}


def test_operator_view_of_a_cluster(etcd, make_agent, tmp_path):
    prefix = "wtcli-%s" % uuid.uuid4().hex[:8]  # this test's keys only
    config = tmp_path / "agent.yaml"
    config.write_text("kvstore: etcd\nkvstore-endpoints: [%s]\nkvstore-prefix: %s\n"
                      "node-name: node-a\nnode-addresses: [192.0.2.10/24]\n"
                      "node-pod-cidrs: [10.213.200.0/24]\nkvstore-lease-ttl: 10\n"
                      % (ENDPOINT, prefix))
    agent = make_agent(config=str(config))

    # node list: this node, as it published itself under its lease
    nodes = wait_for("node entry", lambda: agent.api("GET", "/v1/nodes")[1])
    (me,) = nodes
    assert me["name"] == "node-a" and me["self"] is True and me["health"] == "alive"
    assert me["addresses"] == ["192.0.2.10/24"] and me["podCIDRs"] == ["10.213.200.0/24"]
    assert json.loads(cli(agent, "node", "list", "-o", "json").stdout) == nodes
    table = cli(agent, "node", "list").stdout.splitlines()
    assert table[0].split() == ["NAME", "ADDRESSES", "POD-CIDRS", "VERSION", "HEALTH", "STARTED"]
    assert table[1].split()[:5] == ["*node-a", "192.0.2.10/24", "10.213.200.0/24",
                                    me["version"], "alive"]

    # kvstore list/get: relative and absolute names reach the same key
    key = "%s/nodes/v1/node-a" % prefix
    listed = json.loads(cli(agent, "kvstore", "list", "nodes/", "-o", "json").stdout)
    assert listed["prefix"] == "%s/nodes/" % prefix and listed["count"] == 1
    (item,) = listed["items"]
    assert item["key"] == key and item["encoding"] == "text" and item["lease"]
    assert json.loads(item["value"])["name"] == "node-a"
    assert json.loads(cli(agent, "kvstore", "list", prefix + "/nodes/", "-o", "json").stdout
                      )["items"] == listed["items"]
    # the API's answers as the document declares them (the CLI's client checks nothing)
    assert agent.api("GET", "/v1/kvstore?prefix=nodes/&limit=5")[1]["items"] == listed["items"]
    assert agent.api("GET", "/v1/kvstore?key=" + key)[1]["key"] == key
    assert agent.api("GET", "/v1/kvstore?key=nodes/v1/nobody")[0] == 404
    text = cli(agent, "kvstore", "list", "nodes/").stdout
    assert key in text and "1 key(s) under %s/nodes/ at revision" % prefix in text
    got = json.loads(cli(agent, "kvstore", "get", "nodes/v1/node-a", "-o", "json").stdout)
    assert got == dict(item, truncated=False)
    pretty = cli(agent, "kvstore", "get", key).stdout
    assert json.loads(pretty)["podCIDRs"] == ["10.213.200.0/24"] and "\n  " in pretty

    # a value that is not text, written by someone else under the prefix
    subprocess.run(["etcdctl", "--endpoints", ENDPOINT, "put", prefix + "/junk/bin"],
                   input=b"a\\\xff\x00", check=True, capture_output=True,
                   env=dict(os.environ, ETCDCTL_API="3"))  # the value from stdin: any bytes
    junk = json.loads(cli(agent, "kvstore", "get", "junk/bin", "-o", "json").stdout)
    assert (junk["encoding"], junk["value"], junk["size"]) == ("escaped", "a\\x5c\\xff\\x00", 4)
    assert cli(agent, "kvstore", "get", "junk/bin").stdout == "a\\x5c\\xff\\x00\n"
    limited = json.loads(cli(agent, "kvstore", "list", "--limit", "1", "-o", "json").stdout)
    assert limited["truncated"] is True and len(limited["items"]) == 1 and limited["count"] >= 2
    missing = cli(agent, "kvstore", "get", "nodes/v1/nobody", check=False)
    assert missing.returncode == 1
    assert "no key '%s/nodes/v1/nobody' in etcd" % prefix in missing.stderr

    # status and check: reachable
    info = json.loads(cli(agent, "status", "-o", "json").stdout)  # checked by the document
    kv = info["kvstore"]
    assert kv["reachable"] is True and kv["endpoints"] == [ENDPOINT] and kv["node"] == "node-a"
    assert kv["prefix"] == prefix + "/" and kv["nodes"] == 1 and kv["leader"]
    status_text = cli(agent, "status").stdout
    assert "etcd at %s reachable" % ENDPOINT in status_text and "UNREACHABLE" not in status_text
    report = json.loads(cli(agent, "check", "--conf-dir", str(tmp_path), "--agent-config",
                            str(config), "-o", "json", check=False).stdout)
    lines = {ln["check"]: ln for ln in report["checks"]}
    assert lines["kvstore"]["ok"] is True, lines["kvstore"]
    assert lines["agent config"]["ok"] is True
    assert "kvstore etcd at %s" % ENDPOINT in lines["agent config"]["detail"]
    metrics = scrape(agent)
    assert metrics["cilium_cni_kvstore_reachable"] == 1
    assert metrics["cilium_cni_kvstore_nodes"] == 1
    assert "cilium_cni_kvstore_watch_events_total" in metrics
    assert "cilium_cni_kvstore_pending_writes" in metrics

    # etcd gone: status and check say so, with the remedy; the agent answers
    etcd.stop()
    info = json.loads(cli(agent, "status", "-o", "json").stdout)
    assert info["kvstore"]["reachable"] is False and info["kvstore"]["lastError"]
    status_text = cli(agent, "status").stdout
    assert "UNREACHABLE: etcd at %s unreachable: " % ENDPOINT in status_text
    assert "check kvstore-endpoints and that a quorum of etcd members runs" in status_text
    report = json.loads(cli(agent, "check", "--conf-dir", str(tmp_path), "-o", "json",
                            check=False).stdout)
    line = {ln["check"]: ln for ln in report["checks"]}["kvstore"]
    assert line["ok"] is False and "unreachable" in line["detail"]
    assert "new label sets fail with code 11" in line["remedy"]
    down = cli(agent, "kvstore", "list", check=False)
    assert down.returncode == 1 and "etcd at %s" % ENDPOINT in down.stderr
    assert scrape(agent)["cilium_cni_kvstore_reachable"] == 0


def test_an_agent_alone_is_in_no_cluster(agent):
    for args in (["node", "list"], ["kvstore", "list"], ["kvstore", "get", "x"]):
        proc = cli(agent, *args, check=False)
        assert proc.returncode == 1
        assert "this node is not in a cluster" in proc.stderr and "kvstore: etcd" in proc.stderr
    assert agent.api("GET", "/v1/status")[1]["kvstore"] is None
    assert "kvstore:       none" in cli(agent, "status").stdout
