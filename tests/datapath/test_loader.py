"""The endpoint programs on a real kernel: pins, tc filters, counters,
restart of the agent, and leaving other people's filters alone."""

import json
import os
import threading

import pytest
from bcc import BPF, libbcc

from datapath import bpffs
from datapath.errors import DatapathError, LinkNotFound
from datapath.loader import Datapath
from datapath.maps.fields import DIR_EGRESS, DIR_INGRESS
from tests import lab
from tests.kernel import tc_filters

pytestmark = pytest.mark.kernel

EP = 42


def pinned_prog_id(path):
    out = lab.sh("bpftool", "-j", "prog", "show", "pinned", path).stdout
    return json.loads(out)["id"]


def prog_ids(dp):
    """The endpoint programs' ids as bpftool sees their pins (a load pins
    the programs it loaded)."""
    return {name: pinned_prog_id(dp.prog_pin(name)) for name in ("from_container", "to_container")}


def pings(pod, ping, count=3):
    lab.sh(*ping, "-c", str(count), "-W", "1", pod.pod_ip)


def test_load_pins_programs_and_maps(datapath, bpf_root):
    for name in ("progs/from_container", "progs/to_container", "maps/endpoints", "maps/metrics"):
        assert os.path.exists(f"{bpf_root}/{name}"), name
    assert sorted(os.listdir(f"{bpf_root}/progs")) == ["from_container", "from_netdev", "to_container",
                                                        "to_netdev"]
    # `events` (perf array) is not pinned: each load reads its own.
    assert sorted(os.listdir(f"{bpf_root}/maps")) == ["ct", "endpoints", "ipcache", "lb_backends", "lb_config",
                                                       "lb_ct", "lb_services", "lb_sock", "metrics", "policy"]
    assert bpffs.is_bpffs(bpf_root)
    assert 0 < datapath.compile_seconds < 30


def test_map_pressure_counts_every_map_that_can_fill_up(datapath):
    pressure = datapath.map_pressure()
    assert "lb_config" not in pressure  # an array: its one entry is always there
    assert set(pressure) == set(datapath.MAP_SHAPES) - {"lb_config"}
    assert all(0 <= n <= cap for n, cap in pressure.values())


def test_source_lists_flags_and_debug_text_compiles_alone(datapath, bpf_root):
    text = datapath.source()
    assert f'-DPIN_METRICS="{bpf_root}/maps/metrics"' in text
    assert "int from_container(struct __sk_buff *skb)" in text
    standalone = datapath.source(debug=True)
    assert f'#define PIN_ENDPOINTS "{bpf_root}/maps/endpoints"' in standalone
    bpf = BPF(text=standalone.encode())  # no cflags: the defines are in the text
    try:
        assert bpf.load_func(b"to_container", BPF.SCHED_CLS).fd >= 0
    finally:
        bpf.cleanup()


def test_attach_twice_and_tc_shows_our_programs(datapath, pod):
    idx = pod.host_ifindex
    assert datapath.attached(idx) == {"from-container": False, "to-container": False}
    datapath.attach(idx)
    assert datapath.attached(idx) == {"from-container": True, "to-container": True}
    datapath.attach(idx)
    assert datapath.attached(idx) == {"from-container": True, "to-container": True}
    ids = prog_ids(datapath)
    ingress, egress = tc_filters(pod.host_ifname, "ingress"), tc_filters(pod.host_ifname, "egress")
    assert "cilium-cni/from_container direct-action" in ingress and f"id {ids['from_container']} " in ingress
    assert "cilium-cni/to_container direct-action" in egress and f"id {ids['to_container']} " in egress
    # One filter per hook even after two attaches ("pref 1 bpf chain 0" also
    # heads the list once, without a handle).
    assert ingress.count("handle 0x1") == 1 and egress.count("handle 0x1") == 1


def test_ping_is_counted_both_ways(datapath, pod, ping):
    idx = pod.host_ifindex
    datapath.attach(idx)
    datapath.endpoints.set(idx, EP)
    assert datapath.endpoints.entries() == {idx: EP}
    pings(pod, ping)
    stats = datapath.metrics.stats(EP)
    assert stats["ingress"]["packets"] >= 3 and stats["egress"]["packets"] >= 3
    # skb->len at tc includes the Ethernet header: 14 + 20 + 8 + 56 bytes.
    assert stats["ingress"]["bytes"] >= 3 * 98 and stats["egress"]["bytes"] >= 3 * 98
    assert set(datapath.metrics.entries()) == {(EP, DIR_INGRESS), (EP, DIR_EGRESS)}


def test_traffic_of_an_unknown_device_counts_under_endpoint_zero(datapath, pod, ping):
    datapath.attach(pod.host_ifindex)
    pings(pod, ping, count=1)
    stats = datapath.metrics.stats(0)
    assert stats["ingress"]["packets"] >= 1 and stats["egress"]["packets"] >= 1
    assert datapath.endpoints.entries() == {}


def test_restart_keeps_entries_and_counters(make_datapath, pod, ping):
    idx = pod.host_ifindex
    first = make_datapath()
    first.attach(idx)
    first.endpoints.set(idx, EP)
    pings(pod, ping)
    before = first.metrics.stats(EP)
    old_ids = prog_ids(first)
    first.close()

    # Agent down: the filters stay and keep counting into the pinned maps.
    pings(pod, ping)
    second = make_datapath()
    assert second.endpoints.entries() == {idx: EP}
    during = second.metrics.stats(EP)
    for direction in ("ingress", "egress"):
        assert during[direction]["packets"] >= before[direction]["packets"] + 3
    assert prog_ids(second) != old_ids
    assert second.attached(idx) == {"from-container": False, "to-container": False}

    second.attach(idx)
    assert second.attached(idx) == {"from-container": True, "to-container": True}
    ingress = tc_filters(pod.host_ifname, "ingress")
    assert ingress.count("handle 0x1") == 1 and f"id {prog_ids(second)['from_container']} " in ingress
    assert f"id {old_ids['from_container']} " not in ingress
    pings(pod, ping)
    after = second.metrics.stats(EP)
    for direction in ("ingress", "egress"):
        assert after[direction]["packets"] >= during[direction]["packets"] + 3

    # load() again on a live object swaps programs; attach replaces cleanly.
    second.load()
    assert second.attached(idx) == {"from-container": False, "to-container": False}
    second.attach(idx)
    assert second.attached(idx) == {"from-container": True, "to-container": True}
    assert tc_filters(pod.host_ifname, "egress").count("handle 0x1") == 1


def test_remove_endpoint_leaves_no_entries(datapath, pod, ping):
    idx = pod.host_ifindex
    datapath.attach(idx)
    datapath.endpoints.set(idx, EP)
    pings(pod, ping, count=1)
    datapath.detach(idx)  # so that no packet re-creates a counter meanwhile
    datapath.remove_endpoint(idx, EP)
    assert datapath.endpoints.entries() == {}
    assert [k for k in datapath.metrics.entries() if k[0] == EP] == []
    no_drops = {"policy-denied": 0, "policy-deny": 0, "invalid-packet": 0, "no-service-backend": 0}
    assert datapath.metrics.stats(EP) == {
        "ingress": {"packets": 0, "bytes": 0, "drops": no_drops},
        "egress": {"packets": 0, "bytes": 0, "drops": no_drops},
    }
    datapath.remove_endpoint(idx, EP)  # already gone: fine


def test_remove_endpoint_spares_an_ifindex_reused_by_another(datapath):
    datapath.endpoints.set(1000, EP)
    datapath.endpoints.set(1000, EP + 1)  # the device now belongs to a newer endpoint
    datapath.remove_endpoint(1000, EP)
    assert datapath.endpoints.entries() == {1000: EP + 1}


def test_endpoint_id_zero_is_reserved(datapath):
    with pytest.raises(ValueError, match="endpoint id 0"):
        datapath.endpoints.set(1000, 0)


def add_foreign_filter(dev, hook, prio):
    # cls_matchall (the usual "match everything" filter) is not built into
    # every kernel (not into this lab's 6.18); cls_u32 is.
    matchall = ("tc", "filter", "add", "dev", dev, hook, "prio", str(prio), "matchall", "action", "ok")
    if lab.sh(*matchall, check=False).returncode == 0:
        return "matchall"
    lab.sh("tc", "filter", "add", "dev", dev, hook, "prio", str(prio), "u32", "match", "u32", "0", "0", "flowid", "1:1")
    return "u32"


def test_detach_removes_only_our_filters(datapath, pod):
    dev = pod.host_ifname
    lab.sh("tc", "qdisc", "add", "dev", dev, "clsact")
    kinds = {hook: add_foreign_filter(dev, hook, 99) for hook in ("ingress", "egress")}
    datapath.attach(pod.host_ifindex)  # an existing clsact qdisc is fine
    assert datapath.attached(pod.host_ifindex) == {"from-container": True, "to-container": True}
    datapath.detach(pod.host_ifindex)
    for hook in ("ingress", "egress"):
        out = tc_filters(dev, hook)
        assert f"pref 99 {kinds[hook]}" in out
        assert "cilium-cni" not in out and " bpf " not in out
    assert datapath.attached(pod.host_ifindex) == {"from-container": False, "to-container": False}
    datapath.detach(pod.host_ifindex)  # nothing left of ours: fine
    assert f"pref 99 {kinds['ingress']}" in tc_filters(dev, "ingress")


def test_attach_refuses_a_foreign_bpf_filter_in_our_slot(datapath, pod, bpf_root):
    # Same kind, same prio and handle: the kernel would let us replace it.
    dev = pod.host_ifname
    foreign = BPF(text=b"int foreign(struct __sk_buff *skb) { return -1; }")
    try:
        fn = foreign.load_func(b"foreign", BPF.SCHED_CLS)
        pin = f"{bpf_root}/foreign"
        assert libbcc.lib.bpf_obj_pin(fn.fd, pin.encode()) == 0
    finally:
        foreign.cleanup()
    lab.sh("tc", "qdisc", "add", "dev", dev, "clsact")
    lab.sh("tc", "filter", "add", "dev", dev, "ingress", "prio", "1", "handle", "1", "bpf", "object-pinned", pin, "da")
    with pytest.raises(DatapathError, match="from_container on link .* holds a foreign filter"):
        datapath.attach(pod.host_ifindex)
    datapath.detach(pod.host_ifindex)
    out = tc_filters(dev, "ingress")
    assert "name foreign" in out and "cilium-cni" not in out


def test_attach_fails_on_another_kind_at_our_priority(datapath, pod):
    dev = pod.host_ifname
    lab.sh("tc", "qdisc", "add", "dev", dev, "clsact")
    kind = add_foreign_filter(dev, "egress", 1)
    with pytest.raises(DatapathError, match="to_container on link"):
        datapath.attach(pod.host_ifindex)
    # The hooks are attached one by one: the caller rolls back with detach().
    datapath.detach(pod.host_ifindex)
    assert f"pref 1 {kind}" in tc_filters(dev, "egress")
    assert "cilium-cni" not in tc_filters(dev, "ingress") + tc_filters(dev, "egress")


def test_missing_link(datapath, pod):
    idx = pod.host_ifindex
    lab.sh("ip", "link", "del", pod.host_ifname)
    assert datapath.attached(idx) == {"from-container": False, "to-container": False}
    datapath.detach(idx)
    with pytest.raises(LinkNotFound, match=f"link {idx} not found"):
        datapath.attach(idx)


def test_incompatible_pinned_map_is_refused(bpf_root, require_root):
    os.makedirs(f"{bpf_root}/maps")
    lab.sh("bpftool", "map", "create", f"{bpf_root}/maps/endpoints", "type", "hash",
           "key", "8", "value", "16", "entries", "16", "name", "endpoints")
    dp = Datapath(bpf_root)
    with pytest.raises(DatapathError, match="pinned map .*endpoints"):
        dp.load()
    dp.close()


def test_root_outside_bpffs_is_refused_untouched(tmp_path, require_root):
    root = tmp_path / "not-bpffs" / "cilium-cni"
    with pytest.raises(DatapathError, match="not on a bpf filesystem"):
        Datapath(str(root)).load()
    assert not (tmp_path / "not-bpffs").exists()
    with pytest.raises(ValueError, match="invalid bpf root"):
        Datapath('/sys/fs/bpf/with"quote')


def test_readers_on_other_threads_while_mutating(datapath, pod):
    idx = pod.host_ifindex
    fds_before = len(os.listdir("/proc/self/fd"))
    errors = []
    stop = threading.Event()

    def reader():
        try:
            while not stop.is_set():
                datapath.attached(idx)
                datapath.metrics.stats(EP)
                datapath.endpoints.entries()
        except Exception as exc:  # reported below
            errors.append(exc)

    readers = [threading.Thread(target=reader) for _ in range(4)]
    for t in readers:
        t.start()
    try:
        for _ in range(30):
            datapath.attach(idx)
            datapath.endpoints.set(idx, EP)
            datapath.detach(idx)
            datapath.remove_endpoint(idx, EP)
        datapath.load()
        datapath.attach(idx)
    finally:
        stop.set()
        for t in readers:
            t.join()
    assert errors == []
    assert datapath.attached(idx) == {"from-container": True, "to-container": True}
    # New threads must not leave sockets behind (pyroute2 IPRoute would).
    for _ in range(20):
        t = threading.Thread(target=datapath.attached, args=(idx,))
        t.start()
        t.join()
    assert len(os.listdir("/proc/self/fd")) <= fds_before + 2
