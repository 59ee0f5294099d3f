"""The agent's contract: CHECK finds drift, GC, STATUS, its socket, stop and restore."""

import json
import os
import stat
import threading
import time

import pytest

from tests import lab
from tests.chaining.test_chain import map_dump

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("require_root")]


def our_conf(net, **extra):
    plugin = net.conflist["plugins"][-1]
    return dict(plugin, name=net.name, cniVersion=net.conflist["cniVersion"], **extra)


def check_fails(net, cid, ns):
    """Our plugin's CHECK alone (the bridge's own CHECK sees some drift first)."""
    conf = our_conf(net, prevResult=net.chain.cache[(cid, "eth0")])
    rc, out, err = lab.run_plugin(lab.PLUGIN_BIN, "CHECK", conf, cid, ns.path)
    assert rc == 1 and "Traceback" not in err
    return out


def host_veth(agent, key):
    return agent.api("GET", "/v1/endpoints/%s" % key)[1]["host"]["ifname"]


def test_check_detects_detached_program(agent, make_network, pods):
    net = make_network(agent)
    p = pods()
    net.chain.add("ctr", p.path)
    net.chain.check("ctr", p.path)
    lab.sh("tc", "filter", "del", "dev", host_veth(agent, "ctr:eth0"), "ingress")
    out = check_fails(net, "ctr", p)
    assert out["code"] == 100
    assert "from-container is not attached" in out["msg"]
    assert "to-container" not in out["msg"]


def test_check_detects_changed_addresses(agent, make_network, pods):
    net = make_network(agent)
    p = pods()
    net.chain.add("ctr", p.path)
    extra = "%s/24" % (net.subnet.network_address + 200)
    p.run("ip", "addr", "add", extra, "dev", "eth0")
    out = check_fails(net, "ctr", p)
    assert "addresses of 'eth0' changed" in out["msg"] and extra in out["msg"]


def test_check_detects_veth_gone(agent, make_network, pods):
    net = make_network(agent)
    p = pods()
    net.chain.add("ctr", p.path)
    veth = host_veth(agent, "ctr:eth0")
    p.run("ip", "link", "del", "eth0")
    out = check_fails(net, "ctr", p)
    assert "host veth '%s'" % veth in out["msg"] and "is gone" in out["msg"]
    net.chain.delete("ctr", p.path)
    assert agent.endpoints() == []


def test_check_detects_missing_endpoint(agent, make_network, pods):
    net = make_network(agent)
    p = pods()
    net.chain.add("ctr", p.path)
    assert agent.api("DELETE", "/v1/endpoints/ctr:eth0")[0] == 200
    out = check_fails(net, "ctr", p)
    assert out["code"] == 3 and "ctr:eth0" in out["msg"]


def test_gc_removes_only_invalid_attachments_of_its_network(agent, make_network, pods):
    net = make_network(agent, cni_version="1.1.0")
    other = make_network(agent, cni_version="1.1.0")
    a, b, c, d = pods(), pods(), pods(), pods()
    for cid, ns in (("ctr-a", a), ("ctr-b", b), ("ctr-c", c)):
        net.chain.add(cid, ns.path)
    other.chain.add("ctr-d", d.path)
    conf = our_conf(net, **{"cni.dev/valid-attachments": [
        {"containerID": "ctr-a", "ifname": "eth0"}]})
    rc, out, err = lab.run_plugin(lab.PLUGIN_BIN, "GC", conf)
    assert (rc, out) == (0, None), err
    assert sorted(e["key"] for e in agent.endpoints()) == ["ctr-a:eth0", "ctr-d:eth0"]
    assert len(map_dump(agent, "endpoints")) == 2
    # The older key name is honoured too.
    conf = our_conf(net, **{"cni.dev/attachments": []})
    assert lab.run_plugin(lab.PLUGIN_BIN, "GC", conf)[0] == 0
    assert [e["key"] for e in agent.endpoints()] == ["ctr-d:eth0"]


def test_status(agent, make_network):
    net = make_network(agent, cni_version="1.1.0")
    rc, out, _ = lab.run_plugin(lab.PLUGIN_BIN, "STATUS", our_conf(net))
    assert (rc, out) == (0, None)
    agent.stop()
    rc, out, _ = lab.run_plugin(lab.PLUGIN_BIN, "STATUS", our_conf(net))
    assert rc == 1 and out["code"] == 50


def test_the_plugin_waits_for_an_agent_that_is_starting(make_agent, tmp_path):
    """Between binding its socket and listening (compiling, restoring) the
    agent holds its starting marker; a GC sent then waits and is served."""
    agent = make_agent(start=False)
    marker = agent.socket + ".starting"
    starter = threading.Thread(target=agent.start, name="agent-start")
    starter.start()
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(marker):
            assert time.monotonic() < deadline and starter.is_alive(), agent.log()
            time.sleep(0.005)
        conf = {"cniVersion": "1.1.0", "name": "net", "type": "cilium-cni",
                "agent-socket": agent.socket, "log-file": str(tmp_path / "plugin.log"),
                "cni.dev/valid-attachments": []}
        t0 = time.monotonic()
        rc, out, err = lab.run_plugin(lab.PLUGIN_BIN, "GC", conf)
        took = time.monotonic() - t0
    finally:
        starter.join()
    assert (rc, out) == (0, None), err
    assert took > 0.2  # it did wait: the agent takes ~1.5 s to start
    assert not os.path.exists(marker)
    assert "gc removed 0 endpoint(s)" in (tmp_path / "plugin.log").read_text()


def test_socket_is_root_only_and_stop_is_clean(make_agent, make_network, pods):
    agent = make_agent()
    mode = os.stat(agent.socket).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    net = make_network(agent)
    p = pods()
    net.chain.add("ctr", p.path)
    veth = host_veth(agent, "ctr:eth0")
    agent.stop()
    assert agent.proc.returncode == 0
    assert not os.path.exists(agent.socket)
    # Programs stay pinned and attached while the agent is down.
    assert os.path.exists(os.path.join(agent.bpf_root, "progs", "from_container"))
    assert "from_container" in lab.sh("tc", "filter", "show", "dev", veth, "ingress").stdout
    assert "agent stopped" in agent.log()


def test_restart_removes_endpoints_whose_pod_vanished(make_agent, make_network, pods, tmp_path):
    agent = make_agent(workdir=tmp_path / "a")
    net = make_network(agent)
    keep, gone = pods(), pods()
    net.chain.add("ctr-keep", keep.path)
    net.chain.add("ctr-gone", gone.path)
    agent.stop()
    gone.remove()  # the pod's veth goes with its netns; no DEL ever arrives
    agent.start()
    assert [e["key"] for e in agent.endpoints()] == ["ctr-keep:eth0"]
    assert len(map_dump(agent, "endpoints")) == 1
    net.chain.check("ctr-keep", keep.path)


def test_repeated_add_is_idempotent(agent, make_network, pods):
    net = make_network(agent)
    p = pods()
    first = net.chain.add("ctr", p.path)
    (ep,) = agent.endpoints()
    plugin = net.conflist["plugins"][-1]
    conf = dict(plugin, name=net.name, cniVersion="1.0.0", prevResult=first)
    rc, out, _ = lab.run_plugin(lab.PLUGIN_BIN, "ADD", conf, "ctr", p.path)
    assert rc == 0 and out == first
    (again,) = agent.endpoints()
    assert again["id"] == ep["id"] and again["host"] == ep["host"]


def tc_filters(veth):
    """The programs tc shows on a veth, both directions."""
    return [lab.sh("tc", "filter", "show", "dev", veth, way).stdout for way in ("ingress", "egress")]


def test_another_containers_add_on_the_same_interface_is_refused(agent, make_network, pods):
    # Regression: ADD for B with A's netns and ifname answered rc 0
    # ("replacing stale endpoint"), A's CHECK then failed (code 3) and B's
    # DEL removed the programs from A's veth.
    net = make_network(agent)
    p = pods()
    first = net.chain.add("ctr-a", p.path)
    conf = our_conf(net, prevResult=first)
    rc, out, err = lab.run_plugin(lab.PLUGIN_BIN, "ADD", conf, "ctr-b", p.path)
    assert rc == 1 and "Traceback" not in err
    assert out["code"] == 102 and "container 'ctr-a', which is alive" in out["msg"]
    assert [ep["key"] for ep in agent.endpoints()] == ["ctr-a:eth0"]
    veth = host_veth(agent, "ctr-a:eth0")
    before = tc_filters(veth)
    assert all("from_container" in f or "to_container" in f for f in before), before
    rc, out, err = lab.run_plugin(lab.PLUGIN_BIN, "DEL", conf, "ctr-b", p.path)
    assert rc == 0, (out, err)
    assert tc_filters(veth) == before
    net.chain.check("ctr-a", p.path)


def test_api_errors_name_what_was_wrong(agent):
    status, body = agent.api("PUT", "/v1/endpoints/bad!key", {"x": 1})
    assert status == 400 and "invalid endpoint key" in body["error"]["message"]
    status, body = agent.api("PUT", "/v1/endpoints/c1:eth0", {"containerID": "c1"})
    assert status == 400 and "'ifname'" in body["error"]["message"]
    status, body = agent.api("GET", "/v2/nothing")
    assert status == 404 and "/v1" in body["error"]["message"]
    status, body = agent.api("POST", "/v1/gc", ["not", "an", "object"])
    assert status == 400
    assert json.dumps(agent.api("GET", "/v1/status")[1])  # still serving


def test_agent_tells_systemd_ready_then_pings_its_watchdog(make_agent, tmp_path):
    """Type=notify: READY=1 only once the API answers; WATCHDOG=1 while it runs;
    STOPPING=1 on SIGTERM. A real datagram socket stands in for systemd's."""
    import socket
    import time
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(30)
    try:
        agent = make_agent(start=False, env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})
        agent.start()
        first = sock.recv(4096).decode()
        assert first.startswith("READY=1\n") and agent.socket in first, first
        # READY came after the API answered: healthz works at once
        assert agent.api("GET", "/v1/healthz")[0] == 200
        t0 = time.monotonic()
        pings = [sock.recv(4096).decode() for _ in range(3)]
        assert pings == ["WATCHDOG=1\n"] * 3
        assert time.monotonic() - t0 < 3  # every 0.2 s (half of WATCHDOG_USEC)
        agent.stop()
        rest = []
        while not rest or rest[-1] == "WATCHDOG=1\n":
            rest.append(sock.recv(4096).decode())
        assert rest[-1] == "STOPPING=1\n"
    finally:
        sock.close()
