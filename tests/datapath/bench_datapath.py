"""Timings behind the datapath's choices (not a test; run as root):

    .venv/bin/python -m tests.datapath.bench_datapath

Makes its own netns, veth pair and bpffs root and removes them after.
"""

import os
import random
import socket
import statistics
import subprocess
import threading
import time

from pyroute2 import IPRoute

from datapath import bpffs, netns
from datapath.loader import Datapath
from datapath.rtnl import _setns

RUNS = 50


def sh(cmd):
    subprocess.run(cmd, shell=True, check=True, capture_output=True)


def timed(fn, before=None, runs=RUNS):
    fn()  # warm-up
    samples = []
    for _ in range(runs):
        if before:
            before()
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return f"median {statistics.median(samples):6.3f} ms  p90 {samples[int(runs * 0.9)]:6.3f}  max {samples[-1]:6.3f}"


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


def main():
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
        dp.set_endpoint(idx, 1)
        print("endpoint_stats()                       ", timed(lambda: dp.endpoint_stats(1)))
        print("inspect_pod_interface (setns thread + raw rtnetlink)", timed(lambda: netns.inspect_pod_interface(path, "eth0")))
        print("  same reads, pyroute2 IPRoute(netns=, flags=0)     ", timed(lambda: pyroute2_forking(path, idx)))
        print("  same reads, setns thread + IPRoute(use_socket=)   ", timed(lambda: pyroute2_setns_socket(path, idx)))
        print("link_by_index()                                     ", timed(lambda: netns.link_by_index(idx)))
        dp.detach(idx)
        dp.close()
    finally:
        sh(f"ip link del {host} 2>/dev/null || true")
        sh(f"ip netns del {ns}")
        bpffs.remove_tree(root)


if __name__ == "__main__":
    main()
