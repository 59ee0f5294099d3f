"""Benchmark: timings behind the datapath's choices (run as root):

    .venv/bin/python scripts/bench_datapath.py [--runs 50] [--ct 131072] [--smoke]

Compile and load, attach and detach, the pod interface lookup (and the
pyroute2 ways it could be done), map operations of the policy and ct
families at size, and the programs' cost per packet (BPF_PROG_TEST_RUN).
Figures only, no targets: docs/benchmarks.md says what each decided. Makes
its own netns, veth pair and bpffs root and removes them after.
"""

import argparse
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time

from pyroute2 import IPRoute

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datapath import bpffs, bpfsys, netns  # noqa: E402
from datapath.loader import Datapath  # noqa: E402
from datapath.maps.ct import CT_KEY, CT_VAL  # noqa: E402
from datapath.rtnl import _setns  # noqa: E402
from scripts.benchlib import parse_args, print_machine  # noqa: E402
from tests.datapath import packets as tr  # noqa: E402

RUNS = 50  # calls per figure at most (--runs)


def sh(cmd):
    subprocess.run(cmd, shell=True, check=True, capture_output=True)


def timed(fn, before=None, runs=None):
    runs = min(runs or RUNS, RUNS)
    fn()  # warm-up
    samples = []
    for _ in range(runs):
        if before:
            before()
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return f"median {statistics.median(samples):6.3f} ms  p90 {samples[int((runs - 1) * 0.9)]:6.3f}  max {samples[-1]:6.3f}"


def pyroute2_forking(path, host_index):
    # What inspect needs, through IPRoute(netns=...): a child is forked to
    # create the socket.
    with IPRoute(netns=path, flags=0) as ipr:
        (link,) = ipr.get_links(ifname="eth0")
        ipr.get_addr(index=link["index"])
    with IPRoute() as ipr:
        ipr.get_links(index=host_index)


def pyroute2_setns_socket(path, host_index):
    fd = os.open(path, os.O_RDONLY)
    out = {}

    def enter():
        _setns(fd)
        out["sock"] = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, socket.NETLINK_ROUTE)

    t = threading.Thread(target=enter)
    t.start()
    t.join()
    os.close(fd)
    with IPRoute(use_socket=out["sock"]) as ipr:
        (link,) = ipr.get_links(ifname="eth0")
        ipr.get_addr(index=link["index"])
    with IPRoute() as ipr:
        ipr.get_links(index=host_index)


def policy_figures(dp, ct_entries):
    entries = [("ingress", 256 + i, 6, 8080, 16, False) for i in range(1000)]

    def fresh_update():
        dp.policy.update(7, entries)

    print("policy.update, 1000 new entries           ", timed(fresh_update, before=lambda: dp.policy.clear(7), runs=20))
    print("policy.update, 1000 entries already there ", timed(fresh_update, runs=20))
    print("policy.entries(), 1000 entries            ", timed(lambda: dp.policy.entries(7), runs=20))
    print("policy.clear, 1000 entries                ", timed(lambda: dp.policy.clear(7), before=fresh_update, runs=20))
    for other in range(8, 108):  # 100 more endpoints with 1000 entries each
        dp.policy.update(other, entries)
    print("policy.clear, 1000 of 101000 entries      ", timed(lambda: dp.policy.clear(7), before=fresh_update, runs=5))
    print("remove_endpoint, same map                 ", timed(lambda: dp.remove_endpoint(1, 7), before=fresh_update,
                                                                  runs=5))
    for other in range(8, 108):
        dp.policy.clear(other)
    print("ipcache.set                               ", timed(lambda: dp.ipcache.set("10.1.2.0/24", 300)))
    dp.endpoints.set(1, 7, flags=3)
    dp.policy.update(7, [("egress", 0, 17, 53, 16, False)])
    frame = tr.packet("10.9.9.9", "8.8.8.8", tr.UDP, 1000, 53)
    ns = dp.test_run("from_container", frame, repeat=100000).duration_ns
    print(f"from_container, ct hit (kernel, per packet)      {ns} ns")
    dp.ct.flush()
    deny = tr.packet("10.9.9.9", "8.8.8.8", tr.UDP, 1000, 54)
    ns = dp.test_run("from_container", deny, repeat=100000).duration_ns
    print(f"from_container, drop + event (kernel, per packet) {ns} ns")
    print("test_run (one packet, Python to verdict)  ", timed(lambda: tr.run(dp, "egress", frame)))
    # A full ct table (131072 connections by default), half of them expired.
    ct_fd = bpfsys.obj_get(dp.map_pin("ct"))
    now = time.monotonic_ns()
    for i in range(ct_entries):
        key = CT_KEY.pack(i.to_bytes(16, "big"), b"\1" * 16, b"\0\1", b"\0\2", 17, 6, 2, 7)
        bpfsys.update(ct_fd, key, CT_VAL.pack(now - 1 if i % 2 else now + 10**12, 0, 1))
    os.close(ct_fd)
    started = time.perf_counter()
    entries_read = len(dp.ct.entries())
    print(f"ct.entries(), {entries_read} connections      {(time.perf_counter() - started) * 1000:8.1f} ms")
    started = time.perf_counter()
    removed = dp.ct.gc()
    print(f"ct.gc(), removes {removed} of {ct_entries}        {(time.perf_counter() - started) * 1000:8.1f} ms")
    started = time.perf_counter()
    dp.ct.gc()
    print(f"ct.gc(), nothing expired ({ct_entries // 2} live)    {(time.perf_counter() - started) * 1000:8.1f} ms")
    started = time.perf_counter()
    dp.ct.flush(7)
    print(f"ct.flush(ep), {ct_entries // 2} connections          {(time.perf_counter() - started) * 1000:8.1f} ms")


def main():
    global RUNS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=RUNS, help="calls per figure at most")
    parser.add_argument("--ct", type=int, default=131072, help="connections in the ct table")
    opts = parse_args(parser, {"runs": 2, "ct": 1024})
    RUNS = opts.runs
    print_machine()
    tag = "%06x" % random.getrandbits(24)
    ns, host = f"ccbench-{tag}", f"ccbh{tag}"
    root = f"/sys/fs/bpf/cilium-cni-bench-{tag}"
    path = f"/var/run/netns/{ns}"
    sh(f"ip netns add {ns}")
    try:
        sh(f"ip link add {host} type veth peer name eth0 netns {ns}")
        octet = random.randrange(250)
        sh(f"ip link set {host} up; ip -n {ns} link set eth0 up; ip -n {ns} addr add 10.254.{octet}.2/30 dev eth0")
        with open(f"/sys/class/net/{host}/ifindex") as f:
            idx = int(f.read())

        dp = Datapath(root)
        started = time.perf_counter()
        dp.load()
        print(f"load (compile + load + pin)      {(time.perf_counter() - started) * 1000:8.1f} ms (compile {dp.compile_seconds * 1000:.1f} ms)")
        loads = []
        for _ in range(5):
            started = time.perf_counter()
            dp.load()
            loads.append((time.perf_counter() - started) * 1000)
        print(f"load again (pinned maps reused)  median {statistics.median(loads):.1f} ms over 5")
        print("attach, new device (clsact + 2 filters)", timed(lambda: dp.attach(idx), before=lambda: sh(f"tc qdisc del dev {host} clsact")))
        print("attach, already attached (replace)     ", timed(lambda: dp.attach(idx)))
        print("attached()                             ", timed(lambda: dp.attached(idx)))
        print("detach()                               ", timed(lambda: dp.detach(idx), before=lambda: dp.attach(idx)))
        dp.endpoints.set(idx, 1)
        print("metrics.stats()                        ", timed(lambda: dp.metrics.stats(1)))
        print("inspect_pod_interface (setns thread + raw rtnetlink)", timed(lambda: netns.inspect_pod_interface(path, "eth0")))
        print("  same reads, pyroute2 IPRoute(netns=, flags=0)     ", timed(lambda: pyroute2_forking(path, idx)))
        print("  same reads, setns thread + IPRoute(use_socket=)   ", timed(lambda: pyroute2_setns_socket(path, idx)))
        print("link_by_index()                                     ", timed(lambda: netns.link_by_index(idx)))
        dp.detach(idx)
        policy_figures(dp, opts.ct)
        dp.close()
    finally:
        sh(f"ip link del {host} 2>/dev/null || true")
        sh(f"ip netns del {ns}")
        bpffs.remove_tree(root)


if __name__ == "__main__":
    main()
