"""The operator's command line (`cilium-cni` without CNI_COMMAND), run as a subprocess.

Every command against a real agent, a real bridge network and real pods;
errors are one "Error: ..." line and a non-zero exit, never a traceback.
"""

import json
import os
import subprocess

import pytest

from cni import __version__
from tests import lab

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("require_root")]

CID = "ctr-cli"
KEY = CID + ":eth0"
NO_SOCKET = "/nonexistent/agent.sock"


def cli(*args, timeout=60):
    """Run the CLI without any CNI_* variable; a traceback is always a failure."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    proc = subprocess.run([lab.PLUGIN_BIN, *args], capture_output=True, text=True, env=env,
                          timeout=timeout)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    return proc


def ok(*args):
    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def refused(proc, *words):
    """Non-zero exit with one 'Error: ...' line holding every word."""
    assert proc.returncode != 0, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def pod(agent, make_network, pods):
    """One pod added through a bridge -> cilium-cni chain: (network, endpoint)."""
    net = make_network(agent)
    net.chain.add(CID, pods().path)
    (ep,) = agent.endpoints()
    return net, ep


# --- `check` helpers ---------------------------------------------------------

def conf_dir(tmp_path, conflists, plugin=True):
    """(conf dir holding the conflists, bin dir holding a cilium-cni symlink or not)."""
    confd, bindir = tmp_path / "net.d", tmp_path / "bin"
    confd.mkdir()
    bindir.mkdir()
    for name, conf in conflists.items():
        (confd / name).write_text(conf if isinstance(conf, str) else json.dumps(conf))
    if plugin:
        os.symlink(lab.PLUGIN_BIN, bindir / "cilium-cni")
    return str(confd), str(bindir)


def check(confd, bindir, socket):
    """`check -o json`: (exit code, {check name: line})."""
    proc = cli("check", "--conf-dir", confd, "--bin-dir", bindir,
               "--bin-dir", lab.REFERENCE_PLUGINS, "--socket", socket, "-o", "json")
    report = json.loads(proc.stdout)
    assert report["ok"] == (proc.returncode == 0)
    return proc.returncode, {ln["check"]: ln for ln in report["checks"]}


def failed(lines, name, *words, remedy=""):
    line = lines[name]
    assert line["ok"] is False, line
    for w in words:
        assert w in line["detail"], line
    assert remedy in line["remedy"], line


def with_entry(conflist, **changes):
    conf = json.loads(json.dumps(conflist))
    conf["plugins"][-1].update(changes)
    return conf


# --- `agent` helpers ---------------------------------------------------------

@pytest.fixture
def bpf_root():
    root = "/sys/fs/bpf/%s" % lab.unique("cilium-cni-test-")
    yield root
    lab.Agent("/nonexistent", root).cleanup()  # only removes the bpf root: never started


def run_agent(tmp_path, bpf_root, *args, socket=None, timeout=30):
    socket = socket or str(tmp_path / "run" / "agent.sock")
    return socket, cli("agent", "--socket", socket, "--state-dir", str(tmp_path / "state2"),
                       "--bpf-root", bpf_root, "--log-file", str(tmp_path / "agent2.log"),
                       *args, timeout=timeout)


def config_file(tmp_path, text):
    path = tmp_path / "agent.yaml"
    path.write_bytes(text.encode("latin-1"))  # "\xff" stays one byte: not UTF-8
    return str(path)


# --- version, status ---------------------------------------------------------

def test_version():
    out = ok("version")
    assert out.strip() == "cilium-cni %s (CNI 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0)" % __version__


def test_status(agent, pod):
    out = ok("status", "--socket", agent.socket)
    assert "endpoints:" in out and agent.bpf_root in out
    info = json.loads(ok("status", "--socket", agent.socket, "-o", "json"))
    assert info["endpoints"] == 1
    assert info["pid"] == agent.proc.pid
    assert (info["socket"], info["bpfRoot"]) == (agent.socket, agent.bpf_root)


def test_status_counts_endpoints_from_zero(agent, make_network, pods):
    assert json.loads(ok("status", "--socket", agent.socket, "-o", "json"))["endpoints"] == 0
    make_network(agent).chain.add(CID, pods().path)
    assert json.loads(ok("status", "--socket", agent.socket, "-o", "json"))["endpoints"] == 1


# --- endpoint ----------------------------------------------------------------

def test_endpoint_list(agent, pod):
    _, ep = pod
    header, row = ok("endpoint", "list", "--socket", agent.socket).splitlines()
    assert header.split()[:4] == ["ID", "CONTAINER:IFNAME", "POD", "HOST-VETH"]
    assert row.split()[:4] == [str(ep["id"]), KEY, "-", ep["host"]["ifname"]]
    (listed,) = json.loads(ok("endpoint", "list", "--socket", agent.socket, "-o", "json"))
    assert listed["key"] == KEY
    assert set(listed["stats"]) == {"egress", "ingress"}
    assert {"packets", "bytes"} <= set(listed["stats"]["egress"])


@pytest.mark.parametrize("by", ["id", "key"])
def test_endpoint_get(agent, pod, by):
    _, ep = pod
    ref = str(ep["id"]) if by == "id" else KEY
    out = ok("endpoint", "get", ref, "--socket", agent.socket)
    assert "key:           %s" % KEY in out
    assert "host veth:     %s (ifindex %d)" % (ep["host"]["ifname"], ep["host"]["ifindex"]) in out
    assert "egress:" in out and "ingress:" in out
    got = json.loads(ok("endpoint", "get", ref, "--socket", agent.socket, "-o", "json"))
    assert (got["id"], got["key"], got["host"]) == (ep["id"], KEY, ep["host"])


@pytest.mark.parametrize("ref, words", [("999", ["999"]), ("ctr-none:eth0", ["ctr-none"]),
                                        ("nonsense", ["CONTAINERID:IFNAME"])])
def test_endpoint_get_unknown(agent, pod, ref, words):
    refused(cli("endpoint", "get", ref, "--socket", agent.socket), *words)


def test_endpoint_delete(agent, pod):
    _, ep = pod
    out = ok("endpoint", "delete", KEY, "--socket", agent.socket)
    assert out.strip() == "deleted endpoint %d (%s)" % (ep["id"], KEY)
    assert agent.endpoints() == []
    assert "from_container" not in lab.sh("tc", "filter", "show", "dev", ep["host"]["ifname"],
                                          "ingress").stdout
    refused(cli("endpoint", "delete", KEY, "--socket", agent.socket), "ctr-cli")


@pytest.mark.parametrize("args", [
    ["status"], ["status", "-o", "json"], ["endpoint", "list"], ["endpoint", "list", "-o", "json"],
    ["endpoint", "get", "1"], ["endpoint", "get", KEY], ["endpoint", "delete", KEY]])
def test_agent_unreachable(args):
    refused(cli(*args, "--socket", NO_SOCKET), NO_SOCKET, "not reachable",
            "cilium-cni agent --socket %s" % NO_SOCKET)


# --- check -------------------------------------------------------------------

def test_check_all_ok(agent, pod, tmp_path):
    net, ep = pod
    confd, bindir = conf_dir(tmp_path, {"10-x.conflist": net.conflist})
    proc = cli("check", "--conf-dir", confd, "--bin-dir", bindir,
               "--bin-dir", lab.REFERENCE_PLUGINS, "--socket", agent.socket)
    assert proc.returncode == 0, proc.stdout
    rows = {ln.split("  ")[0]: ln for ln in proc.stdout.splitlines()}
    label = "endpoint %d %s" % (ep["id"], CID)
    for name in ("conflist 10-x.conflist", "plugin binary", "agent", "bpffs",
                 "pinned programs", "state volume", "orphaned programs", label):
        assert name in rows and " ok " in rows[name], proc.stdout
    assert ep["host"]["ifname"] in rows[label]
    assert "agent.db" in rows["state volume"] and " free of " in rows["state volume"]
    assert proc.stdout.splitlines()[-1] == "8 check(s), 0 failed"
    rc, lines = check(confd, bindir, agent.socket)
    assert rc == 0 and len(lines) == 8
    assert all(ln["ok"] for ln in lines.values())
    assert "bridge -> cilium-cni" in lines["conflist 10-x.conflist"]["detail"]
    assert lines["plugin binary"]["detail"] == os.path.join(bindir, "cilium-cni")


def test_check_invalid_json(agent, pod, tmp_path):
    confd, bindir = conf_dir(tmp_path, {"10-x.conflist": pod[0].conflist,
                                        "20-bad.conflist": '{"cniVersion": "1.0.0",'})
    rc, lines = check(confd, bindir, agent.socket)
    assert rc == 1
    failed(lines, "conflist 20-bad.conflist", "does not parse",
           remedy="fix the JSON in %s" % os.path.join(confd, "20-bad.conflist"))
    assert lines["conflist 10-x.conflist"]["ok"]


def test_check_unknown_chaining_mode(agent, pod, tmp_path):
    conf = with_entry(pod[0].conflist, **{"chaining-mode": "bogus"})
    confd, bindir = conf_dir(tmp_path, {"10-x.conflist": conf})
    rc, lines = check(confd, bindir, agent.socket)
    assert rc == 1
    failed(lines, "conflist 10-x.conflist", "chaining-mode", "bogus",
           remedy="fix the cilium-cni entry (schema: ")


def test_check_chaining_mode_that_does_not_fit_the_prior_plugin(agent, pod, tmp_path):
    conf = with_entry(pod[0].conflist, **{"chaining-mode": "flannel"})
    confd, bindir = conf_dir(tmp_path, {"10-x.conflist": conf})
    rc, lines = check(confd, bindir, agent.socket)
    assert rc == 1
    failed(lines, "conflist 10-x.conflist", "chaining mode flannel expects a conflist that "
           "starts with flannel, not bridge", remedy="fix the cilium-cni entry")


def test_check_plugin_first_in_chain(agent, pod, tmp_path):
    conf = json.loads(json.dumps(pod[0].conflist))
    conf["plugins"].reverse()
    confd, bindir = conf_dir(tmp_path, {"10-x.conflist": conf})
    rc, lines = check(confd, bindir, agent.socket)
    assert rc == 1
    failed(lines, "conflist 10-x.conflist", "cilium-cni is first in the chain",
           remedy="fix the cilium-cni entry")


def test_check_no_conflist_uses_plugin(agent, pod, tmp_path):
    conf = json.loads(json.dumps(pod[0].conflist))
    conf["plugins"].pop()
    confd, bindir = conf_dir(tmp_path, {"10-x.conflist": conf})
    rc, lines = check(confd, bindir, agent.socket)
    assert rc == 1
    failed(lines, "conflists", "no conflist in %s uses cilium-cni" % confd,
           remedy="add a cilium-cni entry after the prior plugin")


def test_check_plugin_binary_missing(agent, pod, tmp_path):
    confd, bindir = conf_dir(tmp_path, {"10-x.conflist": pod[0].conflist}, plugin=False)
    rc, lines = check(confd, bindir, agent.socket)
    assert rc == 1
    failed(lines, "plugin binary", "not found in %s:%s" % (bindir, lab.REFERENCE_PLUGINS),
           remedy="install it")
    failed(lines, "plugins of 10-x.conflist", "cilium-cni",
           remedy="install them into one of the CNI bin dirs")


def test_check_agent_down(make_agent, make_network, pods, tmp_path):
    agent = make_agent()
    net = make_network(agent)
    net.chain.add(CID, pods().path)
    agent.stop()
    confd, bindir = conf_dir(tmp_path, {"10-x.conflist": net.conflist})
    rc, lines = check(confd, bindir, agent.socket)
    assert rc == 1
    failed(lines, "agent", agent.socket, "not reachable",
           remedy="start the agent: cilium-cni agent --socket %s" % agent.socket)
    assert "pinned programs" not in lines


def test_check_detached_program(agent, pod, tmp_path):
    net, _ = pod
    (ep,) = agent.api("GET", "/v1/endpoints")[1]
    veth = ep["host"]["ifname"]
    lab.sh("tc", "filter", "del", "dev", veth, "ingress")
    confd, bindir = conf_dir(tmp_path, {"10-x.conflist": net.conflist})
    rc, lines = check(confd, bindir, agent.socket)
    assert rc == 1
    label = "endpoint %d %s" % (ep["id"], CID)
    failed(lines, label, "from-container", "not attached to '%s'" % veth,
           remedy="cilium-cni endpoint delete %s" % KEY)
    assert "to-container" not in lines[label]["detail"]
    assert [n for n, ln in lines.items() if not ln["ok"]] == [label]


# --- agent -------------------------------------------------------------------

@pytest.mark.parametrize("text, words", [
    ("log-level: info\nqueue-sise: 10\n", ["unknown key 'queue-sise'"]),
    ("queue-size: lots\n", ["key 'queue-size'", "int", "lots"]),
    ("log-level: info\nqueue-size: 10\nsocket: /a: b\n", ["line 3", "invalid YAML"]),
    ("log-level: info\n  bad: indent\n", ["line 2", "invalid YAML"]),
    ("log-level: loud\n", ["log-level", "loud"]),
    ('log-level: "\xff"\n', ["invalid YAML", "not UTF-8"]),
    ('bpf-root: "/sys/fs/bpf/a b"\n', ["key 'bpf-root'", "spaces"]),
])
def test_agent_refuses_bad_config(tmp_path, bpf_root, text, words):
    path = config_file(tmp_path, text)
    socket, proc = run_agent(tmp_path, bpf_root, "--config", path)
    refused(proc, "invalid agent config", path, *words)
    assert not os.path.exists(socket)
    assert not os.path.exists(bpf_root)


def test_agent_refuses_bpf_root_off_bpffs(tmp_path):
    socket, proc = run_agent(tmp_path, str(tmp_path / "not-bpffs"))
    refused(proc, "cannot start the datapath", str(tmp_path / "not-bpffs"),
            "not on a bpf filesystem")
    assert not os.path.exists(socket)


def test_agent_refuses_second_agent_on_same_socket(make_agent, tmp_path, bpf_root):
    first = make_agent()
    _, proc = run_agent(tmp_path, bpf_root, socket=first.socket, timeout=20)
    refused(proc, "already serving", first.socket)
    assert not os.path.exists(bpf_root)  # refused before touching the datapath
    assert os.path.exists(first.socket)
    assert first.api("GET", "/v1/healthz") == (200, {"status": "ok"})


def test_second_agent_with_same_config_leaves_the_first_alone(make_agent, make_network, pods,
                                                               tmp_path):
    first = make_agent()
    net = make_network(first)
    net.chain.add(CID, pods().path)
    proc = cli("agent", "--socket", first.socket, "--state-dir", first.state_dir,
               "--bpf-root", first.bpf_root, "--log-file", str(tmp_path / "agent2.log"),
               timeout=20)
    refused(proc, "already running with state dir", first.state_dir)
    status, report = first.api("POST", "/v1/endpoints/%s/check" % KEY, {})
    assert (status, report) == (200, {"problems": []})
