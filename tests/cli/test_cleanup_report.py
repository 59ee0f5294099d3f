"""What `cleanup`, `status` and `check` say about programs of ours on the
node, and which programs count as ours; without root (the kernel side is
tests/cli/test_cleanup.py)."""

import fcntl
import os
import types

import pytest

from cli import teardown
from cli.observe import format_status
from datapath import footprint, socklb
from datapath.loader import HOOKS, NETDEV_HOOKS

pytestmark = pytest.mark.unit

CG = "/sys/fs/cgroup/unified"
CONNECT4 = str(int(socklb.PROGRAMS["sock_connect4"]))


def test_our_programs_are_known_by_the_names_the_kernel_reports():
    # bpf names are cut to 15 characters: both getpeername hooks read the same
    assert footprint.OUR_NAMES["sock_getpeernam"] == footprint.BPF_PROG_TYPE_CGROUP_SOCK_ADDR
    assert all(len(n) <= 15 for n in footprint.OUR_NAMES)
    assert len(footprint.OUR_NAMES) == len(HOOKS) + len(NETDEV_HOOKS) + len(socklb.PROGRAMS) - 1
    assert footprint.OUR_NAMES["from_container"] == footprint.BPF_PROG_TYPE_SCHED_CLS
    # a program of ours by name but of another type is someone else's
    assert not footprint.is_ours(types.SimpleNamespace(name="sock_connect4", type=3))
    assert not footprint.is_ours(types.SimpleNamespace(name="other_connect4", type=18))
    assert footprint.is_ours(types.SimpleNamespace(name="sock_connect4", type=18))


def test_cgroup_roots_come_configured_first_each_once():
    assert footprint.cgroup_roots("/sys/fs/cgroup/x/", CG) == [
        "/sys/fs/cgroup/x", CG, "/sys/fs/cgroup"]
    assert footprint.cgroup_roots(None) == [CG, "/sys/fs/cgroup"]


def test_where_names_the_link_or_the_cgroup_hook():
    link = footprint.Attached(7, "from_container", "tc", "veth1", "ingress", 12)
    hook = footprint.Attached(9, "sock_connect4", "cgroup", CG, CONNECT4)
    assert link.where() == "link veth1 ingress"
    assert hook.where() == "cgroup %s (connect4)" % CG
    assert hook.as_dict() == {"programId": 9, "name": "sock_connect4",
                              "where": "cgroup %s (connect4)" % CG}


def test_orphan_lines_count_list_and_report():
    found = [footprint.Attached(9, "sock_connect4", "cgroup", CG, CONNECT4)]
    assert teardown.orphan_lines([]) == ["no orphaned programs of cilium-cni attached"]
    assert teardown.orphan_lines(found) == [
        "1 orphaned program(s) of cilium-cni attached (no agent's pinned set owns them; remove "
        "with 'cilium-cni cleanup --orphans')",
        "  sock_connect4 (program 9) on cgroup %s (connect4)" % CG]
    assert teardown.orphan_lines(found, dry_run=True)[0] == "would detach 1 orphaned program(s)"
    assert teardown.orphan_lines(found, dry_run=False)[0] == "detached 1 orphaned program(s)"


def test_plan_lines_say_what_was_or_would_be_removed():
    plan = teardown.Plan("/sys/fs/bpf/x", [
        footprint.Attached(7, "from_container", "tc", "veth1", "ingress", 12)],
        ["/sys/fs/bpf/x/progs/from_container", "/sys/fs/bpf/x/maps/ct"],
        ["/var/lib/x/agent.db", "/var/lib/x/agent.lock"], ["/run/x/pending-deletes/a:eth0.json"],
        "/run/x/agent.sock")
    assert teardown.plan_lines(plan, dry_run=True) == [
        "would detach from_container (program 7) from link veth1 ingress",
        "would unpin 2 pinned object(s) under /sys/fs/bpf/x",
        "would remove 2 state file(s): /var/lib/x/agent.db, /var/lib/x/agent.lock",
        "would remove 1 pending-delete record(s): /run/x/pending-deletes/a:eth0.json",
        "would remove the stale socket /run/x/agent.sock"]
    assert teardown.plan_lines(plan, dry_run=False)[0] == (
        "detached from_container (program 7) from link veth1 ingress")
    assert plan.as_dict()["detached"] == [{"programId": 7, "name": "from_container",
                                           "where": "link veth1 ingress"}]
    assert teardown.plan_lines(teardown.Plan("/sys/fs/bpf/x"), dry_run=False) == [
        "nothing of the agent with bpf root /sys/fs/bpf/x is left on this node"]


def test_a_held_state_dir_lock_means_the_agent_runs(tmp_path):
    lock = tmp_path / "agent.lock"
    lock.write_text("4242\n")
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as the running agent holds it
        config = types.SimpleNamespace(state_dir=str(tmp_path), socket=str(tmp_path / "s.sock"),
                                       bpf_root="/sys/fs/bpf/none", cgroup_root=CG)
        for call in (teardown.plan, teardown.carry_out):
            with pytest.raises(teardown.AgentRunning) as err:
                call(config)
            assert str(err.value) == (
                "the agent with state dir '%s' is running (pid 4242): stop it first; cleanup "
                "takes a stopped agent's datapath off" % tmp_path)
        assert lock.exists()
    finally:
        os.close(fd)


STATUS = {"version": "0.1.0", "pid": 1, "uptimeSeconds": 5, "socket": "/s", "bpfRoot": "/b",
          "endpoints": 0, "policyRevision": 0, "policyRules": 0, "queueDepth": 0}


def test_status_counts_orphans_and_names_the_remedy():
    orphan = {"programId": 9, "name": "sock_connect4", "where": "cgroup %s (connect4)" % CG}
    lines = format_status(dict(STATUS, orphans=[orphan]))
    assert ("orphans:       1 program(s) of cilium-cni attached that no agent owns: remove them "
            "with 'cilium-cni cleanup --orphans'") in lines
    assert "  orphan: sock_connect4 (program 9) on cgroup %s (connect4)" % CG in lines
    assert "orphans:       none" in format_status(dict(STATUS, orphans=[]))
    assert "orphans:       cannot tell (see the agent's log)" in format_status(
        dict(STATUS, orphans=None))
    assert not any(ln.startswith("orphans:") for ln in format_status(STATUS))


def test_state_volume_line_says_full_and_low():
    from cli.observe import STATE_VOLUME_LOW, volume_summary
    volume = {"path": "/var/lib/cilium-cni/agent.db", "files": {"agent.db": 4096, "agent.db-wal": 2048},
              "freeBytes": 3 << 30, "sizeBytes": 10 << 30, "lastError": None}
    assert volume_summary(volume) == ("/var/lib/cilium-cni/agent.db: store 6.0 KiB, "
                                      "3.0 GiB free of 10.0 GiB")
    low = dict(volume, freeBytes=STATE_VOLUME_LOW - 1)
    assert volume_summary(low).endswith("; LOW")
    full = dict(volume, freeBytes=0, lastError="database or disk is full")
    assert "FULL: database or disk is full" in volume_summary(full)
    status = {"version": "x", "pid": 1, "uptimeSeconds": 1, "socket": "s", "bpfRoot": "b",
              "endpoints": 0, "policyRevision": 0, "policyRules": 0, "queueDepth": 0,
              "stateVolume": full}
    assert any(line.startswith("state volume:") and "FULL" in line for line in format_status(status))
