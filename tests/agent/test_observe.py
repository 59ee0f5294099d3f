"""Observing a node: `cilium-cni status`, structured logs, progress, and a
malformed agent config refused at start."""

import json
import os
import subprocess

import pytest

from tests import lab
from tests.agent.test_agent import our_conf

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("require_root")]

POD_ARGS = "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=%s"


def cli(*args, check=True):
    proc = subprocess.run([lab.PLUGIN_BIN, *args], capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if not k.startswith("CNI_")})
    assert "Traceback" not in proc.stderr, proc.stderr
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_status_summarizes_the_node(agent, make_network, pods):
    net = make_network(agent)
    a, b = pods(), pods()
    net.chain.add("web", a.path, cni_args=POD_ARGS % "web")
    net.chain.add("db", b.path, cni_args=POD_ARGS % "db")
    db_veth = agent.api("GET", "/v1/endpoints/db:eth0")[1]["host"]["ifname"]
    lab.sh("tc", "filter", "del", "dev", db_veth, "ingress")  # db's program is gone
    conf = our_conf(net, prevResult=net.chain.cache[("web", "eth0")])
    rc, _, _ = lab.run_plugin(lab.PLUGIN_BIN, "ADD", conf, "ghost", a.path, ifname="eth9",
                              cni_args="K8S_POD_NAMESPACE=shop;K8S_POD_NAME=ghost")
    assert rc == 1

    info = json.loads(cli("status", "--socket", agent.socket, "-o", "json").stdout)
    assert info["endpoints"] == 2
    assert info["endpointHealth"] == {"healthy": 1, "unhealthy": 1,
                                      "unhealthyEndpoints": ["db:eth0"]}
    assert info["chainingModes"] == {"generic-veth": 2}
    maps = {m["name"]: m for m in info["maps"]}
    assert {"endpoints", "ipcache", "policy", "ct", "metrics"} <= set(maps)
    assert maps["endpoints"]["entries"] == 2 and maps["endpoints"]["capacity"] == 65536
    assert maps["endpoints"]["pressure"] == round(2 / 65536, 4)
    (err,) = [e for e in info["lastErrors"] if e.get("containerID") == "ghost"]
    assert err["ifname"] == "eth9" and err["level"] == "warning"
    assert (err["podNamespace"], err["podName"]) == ("shop", "ghost")
    assert err["msg"].startswith("ADD /v1/endpoints/ghost:eth9 failed")
    assert info["restore"]["state"] == "done"

    text = cli("status", "--socket", agent.socket).stdout
    flat = [" ".join(ln.split()) for ln in text.splitlines()]
    assert "endpoints: 2 (1 healthy, 1 unhealthy)" in flat
    assert "chaining: generic-veth (2)" in flat
    assert "unhealthy: db:eth0 (see 'cilium-cni check')" in flat
    assert "policy: revision 0, 0 rule(s)" in flat
    assert "metrics: http://%s/metrics" % info["metricsAddress"] in flat
    rows = {ln.split()[0]: ln.split() for ln in text.splitlines() if ln.startswith("  ")}
    assert rows["endpoints"][1:4] == ["2", "65536", "0.0%"]
    assert "ADD /v1/endpoints/ghost:eth9 failed" in text and "containerID=ghost" in text


def test_json_agent_log_and_plugin_log_name_the_pod(make_agent, make_network, pods, tmp_path):
    config = tmp_path / "agent.yaml"
    config.write_text("log-format: json\n")
    agent = make_agent(config=str(config))
    net = make_network(agent)
    ns = pods()
    net.chain.add("web", ns.path, cni_args=POD_ARGS % "web")
    net.chain.delete("web", ns.path, cni_args=POD_ARGS % "web")
    with open(agent.log_file) as f:
        lines = [json.loads(ln) for ln in f]
    about_web = [ln for ln in lines if ln.get("containerID") == "web"]
    assert any(ln["msg"].startswith("endpoint 1 created for web:eth0") for ln in about_web)
    assert any(ln["msg"].startswith("endpoint 1 deleted") for ln in about_web)
    for ln in about_web:
        assert (ln["ifname"], ln.get("podNamespace"), ln.get("podName")) in (
            ("eth0", "shop", "web"), ("eth0", None, None))
    created = [ln for ln in about_web if ln["msg"].startswith("endpoint 1 created")][0]
    assert (created["podNamespace"], created["podName"]) == ("shop", "web")
    with open(net.plugin_log) as f:
        plugin = f.read().splitlines()
    assert any(" verb=ADD containerID=web ifname=eth0 podNamespace=shop podName=web" in ln
               for ln in plugin)
    assert any(" verb=DEL containerID=web ifname=eth0" in ln for ln in plugin)


POLICY = """apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p%d, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: c%d}}]
    toPorts: [{ports: [{port: "%d", protocol: TCP}]}]
"""


def test_policy_import_shows_progress_on_stderr_only(agent, make_network, pods, tmp_path):
    """Thousands of rules in one file: seconds of parsing, shown as it goes."""
    net = make_network(agent)
    for i in range(3):
        net.chain.add("p%d" % i, pods().path, labels={"app": "web" if i else "db"})
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "big.yaml").write_text("---\n".join(POLICY % (i, i, 1000 + i)
                                                    for i in range(2000)))
    (policies / "small.yaml").write_text(POLICY % (5000, 5000, 80))
    proc = cli("policy", "import", str(policies), "--progress", "--socket", agent.socket)
    shown = [ln.split() for ln in proc.stderr.splitlines() if ln.startswith("policy import")]
    parsing = [ln[3].split("/") for ln in shown if ln[2] == "parsing"]
    assert parsing, proc.stderr
    assert any(int(done) < int(total) for done, total in parsing)  # seen mid-way
    assert shown[-1][2:6] == ["updating", "endpoints", "3/3", "(100%)"], proc.stderr
    assert proc.stdout.startswith("imported 2001 rule(s) from 2 file(s)")
    assert "policy import" not in proc.stdout

    proc = cli("policy", "import", str(policies / "small.yaml"), "--progress", "-o", "json",
               "--socket", agent.socket)
    out = json.loads(proc.stdout)  # stdout is one JSON document, progress went to stderr
    assert (out["rules"], out["files"]) == (1, 1)
    assert any(ln.startswith("policy import") for ln in proc.stderr.splitlines())

    quiet = cli("policy", "import", str(policies / "small.yaml"), "--socket", agent.socket)
    assert "policy import" not in quiet.stderr  # not a TTY, no --progress
    ops = agent.api("GET", "/v1/operations")[1]
    imports = [o for o in ops if o["kind"] == "policy-import"]
    assert len(imports) == 3
    assert all((o["state"], o["phase"], o["done"], o["total"]) ==
               ("done", "updating endpoints", 3, 3) for o in imports)


def test_restore_is_reported_in_status(make_agent, make_network, pods, tmp_path):
    agent = make_agent()
    net = make_network(agent)
    for i in range(3):
        net.chain.add("r%d" % i, pods().path)
    agent.stop()
    agent.start()
    restore = agent.api("GET", "/v1/status")[1]["restore"]
    assert (restore["kind"], restore["state"], restore["done"], restore["total"]) == (
        "endpoint-restore", "done", 3, 3)


@pytest.mark.parametrize("text, words", [
    ("socket: /run/x.sock\nmetrics-adress: 127.0.0.1:1\n",
     ["unknown key 'metrics-adress'", "did you mean 'metrics-address'?"]),
    ("queue-size: lots\n", ["key 'queue-size' must be", "'lots'"]),
    ("log-format: xml\n", ["key 'log-format' must be one of text, json, not 'xml'"]),
    ("log-level: info\n\tqueue-size: 3\n", [": line 2: invalid YAML: found character '\\t'"]),
])
def test_malformed_config_is_refused_at_start(tmp_path, text, words):
    config = tmp_path / "agent.yaml"
    config.write_text(text)
    state = tmp_path / "state"
    proc = subprocess.run(
        [lab.PLUGIN_BIN, "agent", "--config", str(config), "--socket", str(tmp_path / "a.sock"),
         "--state-dir", str(state), "--log-file", str(tmp_path / "agent.log")],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("Error: invalid agent config: %s:" % config), proc.stderr
    for w in words:
        assert w in proc.stderr
    assert not state.exists() and not (tmp_path / "a.sock").exists()
