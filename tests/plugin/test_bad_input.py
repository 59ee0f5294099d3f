"""Bad input to the plugin binary: a CNI error object and its code, never a traceback."""

import json
import os
import subprocess

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


@pytest.mark.parametrize("command", ["", "add"])
def test_an_empty_or_unknown_command_is_the_plugin_s_answer(command):
    # set at all, CNI_COMMAND means a runtime is calling: JSON, not the CLI's usage
    rc, out = call(command, conf())
    assert_error(rc, out, 4, "CNI_COMMAND")
    assert out["cniVersion"] == "1.0.0"  # the netconf's, though the environment is wrong


def run_bytes(stdin, **env):
    full = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": "ADD",
            "CNI_CONTAINERID": "ctr1", "CNI_NETNS": "/var/run/netns/x", "CNI_IFNAME": "eth0",
            "CNI_PATH": "/opt/cni/bin", **env}
    proc = subprocess.run([lab.PLUGIN_BIN], input=stdin, capture_output=True, env=full, timeout=60)
    assert b"Traceback" not in proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def test_stdin_that_is_not_utf8():
    rc, out = run_bytes(b'{"cniVersion": "1.0.0", "name": "n\xe9t"}')
    assert_error(rc, out, 6, "not UTF-8 at byte 34")


def test_an_interface_name_that_is_not_utf8():
    rc, out = run_bytes(json.dumps(conf()).encode(), CNI_IFNAME=os.fsdecode(b"eth\xff"))
    assert_error(rc, out, 4, "CNI_IFNAME 'eth\\xff' is not valid UTF-8")


@pytest.mark.parametrize("levels", [900, 100_000])
def test_stdin_nested_too_deep(levels):
    deep = "[" * levels + "]" * levels
    rc, out = call(stdin=json.dumps(conf(args={"deep": 1})).replace("1}", deep + "}", 1))
    assert_error(rc, out, 6, "nested deeper than 64 levels")
    rc, out = call("VERSION", stdin=deep)
    assert rc == 0 and out["cniVersion"] == "1.1.0"


def test_prev_result_ips_null_is_no_ips():
    c = conf()
    c["prevResult"]["ips"] = None
    assert_error(*call(netconf=c), 11, "not reachable")  # accepted: the agent is next
