"""The agent killed (SIGKILL) in the middle of a burst of parallel ADDs.

What a node must look like after the agent is restarted and the runtime has
done what kubelet does with a failed ADD (DEL of that sandbox): no endpoint
of a pod whose ADD failed (no ghost), every pod whose ADD succeeded still an
endpoint with both programs on its host veth (none missing), programs on no
other veth of the network, and `cilium-cni check` and CNI CHECK saying so.
"""

import signal
import threading
import time

import pytest

from tests import lab
from tests.chaining.test_chain import tc_filters

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("require_root")]

PODS = 12


def has_programs(dev):
    return ("cilium-cni/from_container" in tc_filters(dev, "ingress")
            and "cilium-cni/to_container" in tc_filters(dev, "egress"))


def bridge_ports(bridge):
    out = lab.sh("ip", "-o", "link", "show", "master", bridge).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def test_kill_during_a_burst_leaves_no_ghost_and_loses_nothing(make_agent, make_network, pods):
    agent = make_agent()
    net = make_network(agent)
    namespaces = [pods() for _ in range(PODS)]
    outcome = {}

    def add(i):
        try:
            net.chain.add("burst%02d" % i, namespaces[i].path)
            outcome[i] = True
        except lab.PluginFailed as exc:
            outcome[i] = exc

    threads = [threading.Thread(target=add, args=(i,)) for i in range(PODS)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(agent.endpoints()) < 2:
        time.sleep(0.02)
    agent.proc.send_signal(signal.SIGKILL)  # mid-burst: some ADDs done, some not
    agent.proc.wait(10)
    for t in threads:
        t.join(120)
    ok = sorted(i for i, r in outcome.items() if r is True)
    failed = sorted(i for i, r in outcome.items() if r is not True)
    assert len(outcome) == PODS and ok, outcome
    assert failed, "the kill came after every ADD had finished: %s" % outcome
    for i in failed:  # a dead agent is "try again", never a wrong answer
        assert outcome[i].out["code"] == 11, outcome[i].out

    agent.start()
    keys = {ep["key"]: ep for ep in agent.endpoints()}
    for i in ok:  # none missing
        ep = keys.get("burst%02d:eth0" % i)
        assert ep is not None, "pod %d's ADD succeeded but it is no endpoint: %s" % (i, keys)
        assert has_programs(ep["host"]["ifname"]), ep["host"]["ifname"]
        net.chain.check("burst%02d" % i, namespaces[i].path)
    for i in failed:  # what kubelet does with a sandbox whose ADD failed
        net.chain.delete("burst%02d" % i, namespaces[i].path, use_cache=False)

    keys = {ep["key"]: ep for ep in agent.endpoints()}
    assert set(keys) == {"burst%02d:eth0" % i for i in ok}, keys  # no ghost
    ours = {ep["host"]["ifname"] for ep in keys.values()}
    ports = bridge_ports(net.bridge)
    assert ours <= ports and len(ports) == len(ok), (ports, ours)
    for dev in ports:
        assert has_programs(dev) == (dev in ours), dev  # programs only where they belong
    proc = lab.cli(agent, "endpoint", "list", check=True)
    assert proc.returncode == 0
    check = lab.sh(lab.PLUGIN_BIN, "check", "--socket", agent.socket, "--conf-dir", "/nonexistent",
                   check=False)
    endpoint_lines = [ln for ln in check.stdout.splitlines() if ln.startswith("endpoint ")]
    assert len(endpoint_lines) == len(ok) and all(" ok " in ln for ln in endpoint_lines), \
        check.stdout
    for i in ok:
        net.chain.delete("burst%02d" % i, namespaces[i].path)
    assert agent.endpoints() == []
