"""Bad input to the plugin binary: a CNI error object and its code, never a traceback."""

import json

import pytest

from tests import lab

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("require_root")]


def conf(socket="/nonexistent/agent.sock", **extra):
    c = {"cniVersion": "1.0.0", "name": "net", "type": "cilium-cni",
         "chaining-mode": "generic-veth", "agent-socket": socket, "log-file": "/dev/null",
         "prevResult": {"cniVersion": "1.0.0",
                        "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/x"}],
                        "ips": [{"address": "10.1.2.3/24", "interface": 0}]}}
    c.update(extra)
    return c


def call(command="ADD", netconf=None, stdin=None, env_extra=None, **kw):
    kw.setdefault("container_id", "ctr1")
    kw.setdefault("netns", "/var/run/netns/x")
    rc, out, err = lab.run_plugin(lab.PLUGIN_BIN, command, netconf, stdin=stdin,
                                  env_extra=env_extra, **kw)
    assert "Traceback" not in err
    return rc, out


def assert_error(rc, out, code, *words):
    assert rc != 0
    assert out["code"] == code, out
    assert isinstance(out["msg"], str) and out["msg"]
    for w in words:
        assert w in out["msg"], out


def test_empty_stdin():
    assert_error(*call(stdin=""), 6, "stdin")


def test_invalid_json():
    assert_error(*call(stdin="{not json"), 6)


def test_not_an_object():
    assert_error(*call(stdin="[1, 2]"), 6)


@pytest.mark.parametrize("var", ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"])
def test_missing_environment(var):
    rc, out, err = lab.run_plugin(lab.PLUGIN_BIN, "ADD", conf(), "ctr1", "/var/run/netns/x",
                                  env_extra={var: ""})
    assert "Traceback" not in err
    assert_error(rc, out, 4, var)


def test_unknown_command():
    assert_error(*call("FROB", conf()), 4, "FROB")


def test_unsupported_version():
    assert_error(*call(netconf=conf(cniVersion="0.2.0")), 1, "0.2.0")


def test_unknown_chaining_mode():
    rc, out = call(netconf=conf(**{"chaining-mode": "bogus"}))
    assert_error(rc, out, 7, "bogus", "generic-veth")


def test_no_chaining_mode():
    c = conf()
    del c["chaining-mode"]
    assert_error(*call(netconf=c), 7, "chaining-mode")


def test_no_prev_result():
    c = conf()
    del c["prevResult"]
    assert_error(*call(netconf=c), 7, "prevResult")


def test_bad_prev_result():
    c = conf()
    c["prevResult"]["ips"][0]["address"] = "not-an-ip"
    assert_error(*call(netconf=c), 7, "not-an-ip")


def test_check_below_0_4_0_is_incompatible():
    c = conf(cniVersion="0.3.1")
    c["prevResult"]["cniVersion"] = "0.3.1"
    c["prevResult"]["ips"][0]["version"] = "4"
    assert_error(*call("CHECK", c), 1, "0.4.0")


def test_version_lists_all_supported():
    rc, out = call("VERSION", stdin=json.dumps({"cniVersion": "0.4.0"}))
    assert rc == 0
    assert out == {"cniVersion": "0.4.0",
                   "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]}


def test_status_without_agent_is_code_50():
    assert_error(*call("STATUS", conf(cniVersion="1.1.0")), 50, "agent")


def test_gc_needs_1_1_0():
    assert_error(*call("GC", conf()), 1, "1.1.0")


def test_interface_missing_in_netns(agent, pods):
    """prevResult names eth0, but the netns has no such interface."""
    p = pods()
    c = conf(socket=agent.socket)
    c["prevResult"]["interfaces"][0]["sandbox"] = p.path
    rc, out = call(netconf=c, netns=p.path)
    assert_error(rc, out, 7, "eth0", p.path)
    assert agent.endpoints() == []


def test_netns_missing(agent):
    rc, out = call(netconf=conf(socket=agent.socket), netns="/var/run/netns/ccni-does-not-exist")
    assert_error(rc, out, 3, "ccni-does-not-exist")
    assert agent.endpoints() == []
