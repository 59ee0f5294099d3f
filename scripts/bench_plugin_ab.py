"""Benchmark: two cilium-cni plugin executables side by side (A/B), e.g. before and
after a change, or the source tree against a built binary.

For N pods (default 60): one bridge ADD, then on that same pod ADD+DEL by A
and ADD+DEL by B, in alternating order pod by pod, against one agent, so that
machine noise hits both alike. Prints median and p99 per call and B/A. Needs
root; removes everything it made.

    .venv/bin/python scripts/bench_plugin_ab.py A_EXECUTABLE B_EXECUTABLE [--pods N]
"""

import argparse
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scripts.benchlib import bridge_net, cilium_netconf, p99, parse_args, print_machine, remove_lab, target_line  # noqa: E402
from scripts.benchlib import timed_plugin as timed  # noqa: E402
from tests import lab  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--pods", type=int, default=60)
    opts = parse_args(parser, {"pods": 2})
    print_machine()
    work = tempfile.mkdtemp(prefix="cilium-cni-ab-")
    agent = lab.Agent(work)
    bridge = lab.unique("ccab")
    bridge_bin = os.path.join(lab.REFERENCE_PLUGINS, "bridge")
    net = bridge_net("ab", bridge, "10.213.239.0/24", os.path.join(work, "ipam"))
    times = {k: [] for k in ("A ADD", "A DEL", "B ADD", "B DEL")}
    namespaces = []
    try:
        agent.start()
        ours = cilium_netconf("ab", agent.socket, os.path.join(work, "plugin.log"))
        for i in range(opts.pods + 3):  # the first 3 warm caches and are not counted
            ns = lab.Netns()
            namespaces.append(ns)
            cid = "ab%03d" % i
            _, prev = timed(bridge_bin, "ADD", net, cid, ns.path, lab.REFERENCE_PLUGINS)
            conf = dict(ours, prevResult=prev)
            order = (("A", opts.a), ("B", opts.b)) if i % 2 else (("B", opts.b), ("A", opts.a))
            sample = {}
            for name, binary in order:
                for verb in ("ADD", "DEL"):
                    sample["%s %s" % (name, verb)], _ = timed(binary, verb, conf, cid, ns.path,
                                                              lab.REFERENCE_PLUGINS)
            timed(bridge_bin, "DEL", dict(net, prevResult=prev), cid, ns.path,
                  lab.REFERENCE_PLUGINS)
            ns.remove()
            if i >= 3:
                for k, v in sample.items():
                    times[k].append(v)
    finally:
        remove_lab(agent, namespaces, [bridge], work)

    print("pods: %d; A = %s; B = %s" % (opts.pods, opts.a, opts.b))
    print("%-8s %10s %10s" % ("call", "median ms", "p99 ms"))
    for k, v in times.items():
        print("%-8s %10.1f %10.1f" % (k, statistics.median(v), p99(v)))
    ratios = {}
    for verb in ("ADD", "DEL"):
        ratios[verb] = statistics.median(times["B " + verb]) / statistics.median(times["A " + verb])
        print("ratio B/A %s median: %.2f" % (verb, ratios[verb]))
    # A/B of a change: B is no slower when within the run-to-run noise of a
    # median on this kind of machine (about 5%, docs/benchmarks.md).
    print(target_line("B's ADD no slower than A's (B/A <= 1.05)", ratios["ADD"] <= 1.05,
                      "%.2f" % ratios["ADD"]))


if __name__ == "__main__":
    main()
