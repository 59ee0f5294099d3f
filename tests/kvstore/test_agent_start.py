"""An agent pointed at etcd: wrong settings stop it with one line naming
the cause; an etcd that does not answer is waited for (the plugin sees an
agent that is starting) and joined as soon as it answers."""

import time

import pytest
import yaml

from tests import lab

pytestmark = pytest.mark.e2e


def write_config(path, **values):
    path.write_text(yaml.safe_dump({k.replace("_", "-"): v for k, v in values.items()}))
    return str(path)


@pytest.mark.parametrize("values,cause", [
    ({"kvstore_endpoints": ["http://127.0.0.1:1"], "kvstore_ca_file": "/nonexistent/ca.pem"},
     "kvstore TLS files are set but the endpoints are http://"),
    ({"kvstore_endpoints": ["https://127.0.0.1:1"], "kvstore_ca_file": "/nonexistent/ca.pem"},
     "kvstore CA file /nonexistent/ca.pem: No such file or directory"),
    ({"kvstore_endpoints": ["https://127.0.0.1:1"], "kvstore_cert_file": "/etc/hostname"},
     "give both kvstore-cert-file and kvstore-key-file"),
    ({"kvstore_endpoints": ["ftp://127.0.0.1:1"]}, "want http://HOST:PORT or https://HOST:PORT"),
    ({"kvstore_endpoints": []}, "kvstore: etcd needs kvstore-endpoints"),
    ({"kvstore_endpoints": ["http://127.0.0.1:1"], "node_name": "Node_1"},
     "must be a DNS name"),
])
def test_wrong_settings_stop_the_agent_with_one_line(tmp_path, values, cause):
    config = write_config(tmp_path / "agent.yaml", kvstore="etcd", **values)
    agent = lab.Agent(str(tmp_path / "a"), config=config)
    try:
        with pytest.raises(RuntimeError) as err:
            agent.start(timeout=30)
        lines = [line for line in str(err.value).split("\n") if "Error:" in line]
        assert len(lines) == 1 and cause in lines[0], err.value
        assert "Traceback" not in str(err.value)
    finally:
        agent.cleanup()


def test_an_etcd_that_does_not_answer_is_waited_for(tmp_path, etcd_member, cni_path):
    """The agent starts before etcd: it logs why it waits, the plugin's ADD
    meanwhile fails with code 11 after its wait, and once etcd answers the
    agent joins and serves."""
    etcd_member.kill()
    config = write_config(tmp_path / "agent.yaml", kvstore="etcd", node_name="n1",
                          kvstore_prefix="t-wait", kvstore_endpoints=[etcd_member.url])
    agent = lab.Agent(str(tmp_path / "a"), config=config)
    try:
        agent_proc = agent.start_process()
        deadline = time.monotonic() + 30
        while "waiting for etcd" not in agent.log():
            assert agent_proc.poll() is None and time.monotonic() < deadline, agent.log()
            time.sleep(0.2)
        assert etcd_member.url in agent.log()
        netconf = {"cniVersion": "1.0.0", "name": "w", "type": "cilium-cni",
                   "chaining-mode": "generic-veth", "agent-socket": agent.socket, "agent-wait-seconds": 1,
                   "prevResult": {"cniVersion": "1.0.0", "interfaces": [], "ips": []}}
        rc, out, _ = lab.run_plugin(lab.PLUGIN_BIN, "ADD", netconf, "c1", "/var/run/netns/none",
                                    "eth0", "", cni_path)
        assert rc != 0 and out["code"] == 11, out
        assert "still starting" in out["msg"], out
        etcd_member.start()
        agent.wait_ready(timeout=30)
        assert "joined etcd" in agent.log()
        status = agent.api("GET", "/v1/status")[1]
        assert status["kvstore"]["reachable"] and status["kvstore"]["node"] == "n1"
    finally:
        agent.cleanup()
        if etcd_member.proc.poll() is None:
            etcd_member.ctl("del", "--prefix", "t-wait/", check=False)
