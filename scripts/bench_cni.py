"""Benchmark: each plugin's own ADD and DEL time, bridge alone vs bridge -> cilium-cni.

In one run, for N pods (default 60): ADD and DEL through `bridge` alone on
one network, and through `bridge` -> `cilium-cni` on another, interleaved
pod by pod so that machine noise hits both alike. Prints median and p99 of
each plugin's wall time per call (process start included: that is what the
runtime pays) and the ratio cilium-cni / bridge. Needs root; starts its own
agent and removes everything it made.

    scripts/benchmark [--pods N] [--binary PATH ...]

`--binary PATH` (repeatable) also times that cilium-cni executable (e.g. the
built dist/cilium-cni/cilium-cni) on the same pods, right after the source
tree's, and prints each one's start-up alone (CNI VERSION, no agent call)
next to bridge's, so every figure comes from the same run.
"""

import argparse
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scripts.benchlib import (  # noqa: E402
    bridge_net,
    cilium_netconf,
    p99,
    parse_args,
    print_machine,
    remove_lab,
    target_line,
)
from scripts.benchlib import timed_plugin as timed  # noqa: E402
from tests import lab  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--pods", type=int, default=60)
    parser.add_argument("--binary", action="append", default=[], metavar="PATH",
                        help="another cilium-cni executable to time alongside")
    opts = parse_args(parser, {"pods": 2})
    print_machine()
    extra = [os.path.abspath(b) for b in opts.binary]
    for b in extra:
        if not os.access(b, os.X_OK):
            parser.error("--binary %s: not an executable file" % b)
    work = tempfile.mkdtemp(prefix="cilium-cni-bench-")
    agent = lab.Agent(work)
    bridges = [lab.unique("ccbb"), lab.unique("ccbc")]
    bridge_bin = os.path.join(lab.REFERENCE_PLUGINS, "bridge")
    cni_path = lab.REFERENCE_PLUGINS
    nets = []
    for i, br in enumerate(bridges):
        nets.append(bridge_net("bench%d" % i, br, "10.213.%d.0/24" % (240 + i),
                               os.path.join(work, "ipam%d" % i)))
    times = {k: [] for k in ("bridge-alone ADD", "bridge-alone DEL", "bridge ADD",
                             "bridge DEL", "cilium-cni ADD", "cilium-cni DEL")}
    for b in extra:
        times[b + " ADD"], times[b + " DEL"] = [], []
    startup = {k: [] for k in [bridge_bin, lab.PLUGIN_BIN] + extra}
    namespaces = []
    try:
        agent.start()
        ours = cilium_netconf("bench1", agent.socket, os.path.join(work, "plugin.log"))
        for i in range(opts.pods + 3):  # the first 3 warm caches and are not counted
            ns_a, ns_b = lab.Netns(), lab.Netns()
            namespaces += [ns_a, ns_b]
            cid = "bench%03d" % i
            sample = {}
            sample["bridge-alone ADD"], _ = timed(bridge_bin, "ADD", nets[0], cid, ns_a.path,
                                                  cni_path)
            sample["bridge ADD"], prev = timed(bridge_bin, "ADD", nets[1], cid, ns_b.path,
                                               cni_path)
            sample["cilium-cni ADD"], _ = timed(lab.PLUGIN_BIN, "ADD", dict(ours, prevResult=prev),
                                                cid, ns_b.path, cni_path)
            sample["cilium-cni DEL"], _ = timed(lab.PLUGIN_BIN, "DEL", dict(ours, prevResult=prev),
                                                cid, ns_b.path, cni_path)
            for b in extra:  # the same endpoint again, through the other executable
                sample[b + " ADD"], _ = timed(b, "ADD", dict(ours, prevResult=prev), cid,
                                              ns_b.path, cni_path)
                sample[b + " DEL"], _ = timed(b, "DEL", dict(ours, prevResult=prev), cid,
                                              ns_b.path, cni_path)
            for b in startup if extra else ():
                sample[b] = timed(b, "VERSION", {"cniVersion": "1.0.0"}, "", "", cni_path)[0]
            sample["bridge DEL"], _ = timed(bridge_bin, "DEL", dict(nets[1], prevResult=prev), cid,
                                            ns_b.path, cni_path)
            sample["bridge-alone DEL"], _ = timed(bridge_bin, "DEL", nets[0], cid, ns_a.path,
                                                  cni_path)
            ns_a.remove()
            ns_b.remove()
            if i >= 3:
                for k, v in sample.items():
                    (startup if k in startup else times)[k].append(v)
        if agent.endpoints():
            raise RuntimeError("endpoints left after the benchmark: %s" % agent.endpoints())
    finally:
        remove_lab(agent, namespaces, bridges, work)

    print("pods: %d (each plugin's own wall time per call, process start included)"
          % opts.pods)
    width = max([18] + [len(k) for k in times])
    print("%-*s %10s %10s" % (width, "call", "median ms", "p99 ms"))
    for k, v in times.items():
        print("%-*s %10.1f %10.1f" % (width, k, statistics.median(v), p99(v)))
    ratios = {}
    for verb in ("ADD", "DEL"):
        for name in ["cilium-cni"] + extra:
            ratios[name, verb] = statistics.median(times[name + " " + verb]) / statistics.median(
                times["bridge-alone " + verb])
            print("ratio %s/bridge %s median: %.2f" % (name, verb, ratios[name, verb]))
    if extra:
        print("start-up alone (CNI VERSION, median ms): " + ", ".join(
            "%s %.1f" % (b, statistics.median(v)) for b, v in startup.items()))
    for name in ["cilium-cni"] + extra:
        print(target_line("%s ADD at most 2x bridge's (medians)" % name,
                          ratios[name, "ADD"] <= 2.0, "%.2fx" % ratios[name, "ADD"]))


if __name__ == "__main__":
    main()
