"""`cilium-cni cleanup`: a stopped agent's datapath and state come off the
node (its tc filters, its socket hooks on the cgroup, pins, state,
pending-delete records); `--dry-run` only lists them; a running agent is
refused; orphans (programs of ours no pinned set owns) are counted by the
agent's log, `status` and `check`, and `cleanup --orphans` detaches exactly
those while another live agent keeps its set and a foreign program stays.

The agents' socket hooks go on a cgroup of the test's own below the v2
root, so the machine's other processes never run them.
"""

import json
import os

import pytest
from bcc import BPF, BPFAttachType

from datapath import bpffs, bpfsys
from tests import lab

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("require_root")]

CGROUP2 = "/sys/fs/cgroup/unified"
SOCK_HOOKS = ("cgroup_inet4_connect", "cgroup_inet6_connect", "cgroup_udp4_sendmsg",
              "cgroup_udp6_sendmsg", "cgroup_udp4_recvmsg", "cgroup_udp6_recvmsg",
              "cgroup_inet4_getpeername", "cgroup_inet6_getpeername")  # as bpftool names them
FOREIGN = rb"""
#include <linux/bpf.h>
int other_connect4(struct bpf_sock_addr *ctx) { return 1; }
"""


@pytest.fixture
def cgroup(require_root):
    """A cgroup v2 of the test's own; removing it detaches whatever is left on it."""
    path = os.path.join(CGROUP2, lab.unique("ccni-clean-"))
    os.mkdir(path)
    try:
        yield path
    finally:
        os.rmdir(path)


@pytest.fixture
def lb_agent(make_agent, cgroup, tmp_path):
    """make(name): an agent with socket load-balancing on the test's cgroup."""
    def make(name):
        config = tmp_path / ("%s.yaml" % name)
        config.write_text("cgroup-root: %s\n" % cgroup)
        return make_agent(workdir=tmp_path / name, config=str(config), socket_lb=True)
    return make


def hooks(cgroup):
    """{attach type: [program ids]} on the cgroup itself (bpftool observes)."""
    out = {}
    for entry in json.loads(lab.sh("bpftool", "-j", "cgroup", "show", cgroup).stdout.strip() or "[]"):
        out.setdefault(entry["attach_type"], []).append(entry["id"])
    return out


def our_filters(ifname):
    return [ln for hook in ("ingress", "egress")
            for ln in lab.sh("tc", "filter", "show", "dev", ifname, hook, check=False)
            .stdout.splitlines() if "cilium-cni/" in ln]


def pinned(agent):
    from datapath.cleanup import pinned_prog_ids
    return pinned_prog_ids(agent.bpf_root)


def cleanup(agent, cgroup, *args, check=True):
    return lab.cli(agent, "cleanup", "--bpf-root", agent.bpf_root, "--state-dir", agent.state_dir,
                   "--cgroup-root", cgroup, *args, check=check)


def test_cleanup_takes_a_stopped_agent_off_and_dry_run_only_lists(lb_agent, make_network, pods,
                                                                  cgroup):
    agent = lb_agent("a")
    net = make_network(agent)
    running, gone = pods(), pods()
    net.chain.add("ctr-run", running.path)
    net.chain.add("ctr-gone", gone.path)
    veth = {ep["containerID"]: ep["host"]["ifname"] for ep in agent.endpoints()}["ctr-run"]
    ids = pinned(agent)
    assert len(our_filters(veth)) == 2
    assert sorted(hooks(cgroup)) == sorted(SOCK_HOOKS)
    agent.stop()  # SIGTERM: everything stays attached and pinned, by design
    net.chain.delete("ctr-gone", gone.path)  # the agent is down: recorded on disk
    pending = os.path.join(os.path.dirname(agent.socket), "pending-deletes")
    assert os.listdir(pending) == ["ctr-gone:eth0.json"]

    listed = cleanup(agent, cgroup, "--dry-run").stdout
    from_container = next(i for i, p in ids.items() if p.endswith("/from_container"))
    for line in ("would detach from_container (program %d) from link %s ingress"
                 % (from_container, veth), "would unpin %d pinned object(s) under %s" % (
                     len(os.listdir(os.path.join(agent.bpf_root, "progs"))) +
                     len(os.listdir(os.path.join(agent.bpf_root, "maps"))), agent.bpf_root),
                 "would remove 1 pending-delete record(s)", "state file(s): %s/agent.db" % (
                     agent.state_dir)):
        assert line in listed, listed
    assert sum("would detach sock_" in ln for ln in listed.splitlines()) == 8, listed
    assert len(our_filters(veth)) == 2 and len(hooks(cgroup)) == 8 and pinned(agent) == ids
    assert os.listdir(pending) == ["ctr-gone:eth0.json"]

    doc = json.loads(cleanup(agent, cgroup, "-o", "json").stdout)
    assert doc["dryRun"] is False and doc["bpfRoot"] == agent.bpf_root
    assert sorted(d["programId"] for d in doc["detached"]) == sorted(
        i for i, p in ids.items() if "/sock_" in p or p.endswith(("/from_container", "/to_container")))
    assert doc["pendingDeletes"] == [os.path.join(pending, "ctr-gone:eth0.json")]
    assert our_filters(veth) == [] and hooks(cgroup) == {}
    assert not os.path.exists(agent.bpf_root) and not os.path.exists(agent.state_dir)
    assert not os.path.exists(pending)
    # nothing holds the programs any more: the kernel frees them
    assert lab.still_loaded(ids) == []
    again = cleanup(agent, cgroup).stdout
    assert again.strip() == "nothing of the agent with bpf root %s is left on this node" % (
        agent.bpf_root)
    net.chain.delete("ctr-run", running.path)


def test_cleanup_refuses_while_the_agent_runs(lb_agent, cgroup):
    agent = lb_agent("a")
    ids = pinned(agent)
    proc = cleanup(agent, cgroup, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        "Error: the agent with state dir '%s' is running (pid %d): stop it first; cleanup takes "
        "a stopped agent's datapath off" % (agent.state_dir, agent.proc.pid))
    # its socket answers, even when the state dir named is another one
    proc = lab.cli(agent, "cleanup", "--bpf-root", agent.bpf_root, "--dry-run", "--state-dir",
                   os.path.join(os.path.dirname(agent.state_dir), "elsewhere"), check=False)
    assert proc.returncode == 1 and "an agent answers on '%s' (pid %d)" % (
        agent.socket, agent.proc.pid) in proc.stderr
    assert pinned(agent) == ids and len(hooks(cgroup)) == 8


def test_orphans_are_counted_and_only_they_are_detached(lb_agent, make_network, pods, cgroup):
    gone = lb_agent("gone")
    net = make_network(gone)
    pod = pods()
    net.chain.add("ctr-orphan", pod.path)
    (ep,) = gone.endpoints()
    veth = ep["host"]["ifname"]
    # attached: its socket hooks and the pod's two filters (the NodePort ones sit nowhere)
    orphan_ids = {i for i, p in pinned(gone).items() if not p.endswith("_netdev")}
    # The user's way to lose them: SIGTERM, then remove the bpf root and state by hand.
    gone.stop()
    bpffs.remove_tree(gone.bpf_root)
    assert len(our_filters(veth)) == 2 and len(hooks(cgroup)) == 8

    foreign = BPF(text=FOREIGN)  # someone else's program on the same hook
    cg = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fn = foreign.load_func(b"other_connect4", BPF.CGROUP_SOCK_ADDR,
                               attach_type=BPFAttachType.CGROUP_INET4_CONNECT)
        bpfsys.prog_attach(cg, fn.fd, BPFAttachType.CGROUP_INET4_CONNECT, 2)  # ALLOW_MULTI
        live = lb_agent("live")
        live_ids = pinned(live)
        assert "10 program(s) of cilium-cni attached on this node belong to no agent" in live.log()

        status = json.loads(lab.cli(live, "status", "-o", "json").stdout)
        assert {o["programId"] for o in status["orphans"]} == orphan_ids
        assert "orphans:       10 program(s) of cilium-cni attached that no agent owns: remove " \
               "them with 'cilium-cni cleanup --orphans'" in lab.cli(live, "status").stdout
        checks = json.loads(lab.cli(live, "check", "-o", "json", check=False).stdout)["checks"]
        (line,) = [c for c in checks if c["check"] == "orphaned programs"]
        assert not line["ok"] and line["remedy"] == "cilium-cni cleanup --orphans"
        assert "10 attached" in line["detail"] and "link %s ingress" % veth in line["detail"]

        listed = lab.cli(live, "cleanup", "--orphans", "--dry-run", "--cgroup-root", cgroup).stdout
        assert listed.splitlines()[0] == "would detach 10 orphaned program(s)"
        assert len(hooks(cgroup)["cgroup_inet4_connect"]) == 3 and len(our_filters(veth)) == 2

        done = json.loads(lab.cli(live, "cleanup", "--orphans", "--cgroup-root", cgroup, "-o",
                                  "json").stdout)
        assert {o["programId"] for o in done["orphans"]} == orphan_ids
        assert our_filters(veth) == []
        left = hooks(cgroup)
        live_sock = {i for i, p in live_ids.items() if "/sock_" in p}
        assert {i for ids in left.values() for i in ids} == live_sock | {
            bpfsys.prog_info(fn.fd).id}
        assert len(left["cgroup_inet4_connect"]) == 2  # the live agent's and the foreign one
        assert lab.still_loaded(orphan_ids) == []
        assert json.loads(lab.cli(live, "status", "-o", "json").stdout)["orphans"] == []
        bpfsys.prog_detach(cg, fn.fd, BPFAttachType.CGROUP_INET4_CONNECT)
    finally:
        os.close(cg)
        foreign.cleanup()
    net.chain.delete("ctr-orphan", pod.path)
