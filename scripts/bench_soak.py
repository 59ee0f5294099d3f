"""Benchmark: does the agent give back what pods take? A soak of pod cycles and bursts.

In one run, against one real agent: `--cycles` pod cycles (bridge ->
cilium-cni ADD, CHECK, DEL, one pod at a time, labels from a small rotating
set so identities come and go) and then `--burst` pods added in parallel
and deleted in parallel. Every `--every` cycles, and before and after the
burst, it samples the agent process: resident memory (VmRSS), open file
descriptors, threads, and the entries of every pinned map (from the
agent's status). Printed: the samples, and the ratio end / start of each.

Targets: RSS growth at most 2% over the cycles (after a warm-up of
`--warmup` cycles: the first pods fill caches for good), fds and threads
flat, every map back to its entry count at the start once the pods are
gone (the start is after the warm-up, so the bridge's gateway address, a
host entry of the ipcache, is there already). Needs root; removes
everything it made.

    .venv/bin/python scripts/bench_soak.py [--cycles 1000] [--burst 50] [--every 100] [--smoke]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scripts.benchlib import parse_args, print_machine, remove_lab, target_line  # noqa: E402
from tests import lab  # noqa: E402


def sample(agent):
    """VmRSS (KiB), fds, threads and {map: entries} of the agent process."""
    pid = agent.proc.pid
    with open("/proc/%d/status" % pid) as f:
        status = dict(line.split(":", 1) for line in f if ":" in line)
    status_out = subprocess.run([lab.PLUGIN_BIN, "status", "--socket", agent.socket, "-o", "json"],
                                check=True, capture_output=True, text=True).stdout
    maps = {m["name"]: m["entries"] for m in json.loads(status_out)["maps"]}
    return {"rss": int(status["VmRSS"].split()[0]), "fds": len(os.listdir("/proc/%d/fd" % pid)),
            "threads": int(status["Threads"]), "maps": maps,
            "endpoints": len(agent.endpoints())}


def show(label, s):
    print("%-14s rss %7d KiB  fds %4d  threads %3d  endpoints %3d  map entries %s" % (
        label, s["rss"], s["fds"], s["threads"], s["endpoints"],
        " ".join("%s=%d" % kv for kv in sorted(s["maps"].items()) if kv[1])), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=1000)
    parser.add_argument("--burst", type=int, default=50)
    parser.add_argument("--every", type=int, default=100, help="cycles between samples")
    parser.add_argument("--warmup", type=int, default=50, help="cycles before the first sample")
    opts = parse_args(parser, {"cycles": 4, "burst": 2, "every": 2, "warmup": 1})
    print_machine()
    work = tempfile.mkdtemp(prefix="cilium-cni-soak-")
    agent = lab.Agent(os.path.join(work, "agent"))
    bridge = lab.unique("ccsk")
    bindir = os.path.join(work, "bin")
    os.makedirs(bindir)
    os.symlink(lab.PLUGIN_BIN, os.path.join(bindir, "cilium-cni"))
    chain = lab.Chain(lab.bridge_conflist("soak", bridge, "10.213.228.0/22",
                                          os.path.join(work, "ipam"), agent.socket),
                      "%s:%s" % (bindir, lab.REFERENCE_PLUGINS),
                      max_version=lab.REFERENCE_MAX_VERSION)
    namespaces, samples = [], []
    try:
        agent.start()

        def cycle(i):
            ns = lab.Netns()
            namespaces.append(ns)
            cid = "soak%05d" % i
            chain.add(cid, ns.path, labels={"app": "soak%d" % (i % 7)})
            chain.check(cid, ns.path)
            chain.delete(cid, ns.path)
            ns.remove()
            namespaces.remove(ns)

        for i in range(opts.warmup):
            cycle(i)
        samples.append(("start", sample(agent)))
        show(*samples[-1])
        for i in range(opts.warmup, opts.warmup + opts.cycles):
            cycle(i)
            if (i - opts.warmup + 1) % opts.every == 0:
                samples.append(("cycle %d" % (i - opts.warmup + 1), sample(agent)))
                show(*samples[-1])
        burst = [lab.Netns() for _ in range(opts.burst)]
        namespaces += burst
        errors = lab.in_parallel([(chain.add, "burst%03d" % i, ns.path)
                                  for i, ns in enumerate(burst)])
        if errors:
            raise RuntimeError("burst ADDs failed: %s" % errors[:3])
        samples.append(("burst up", sample(agent)))
        show(*samples[-1])
        errors = lab.in_parallel([(chain.delete, "burst%03d" % i, ns.path)
                                  for i, ns in enumerate(burst)])
        if errors:
            raise RuntimeError("burst DELs failed: %s" % errors[:3])
        samples.append(("burst down", sample(agent)))
        show(*samples[-1])
    finally:
        remove_lab(agent, namespaces, [bridge], work)

    start = samples[0][1]
    after_cycles = [s for label, s in samples if label.startswith("cycle")][-1]
    end = samples[-1][1]
    rss = after_cycles["rss"] / start["rss"]
    print("end / start over %d cycles: rss %.3f, fds %.3f, threads %.3f" % (
        opts.cycles, rss, after_cycles["fds"] / start["fds"],
        after_cycles["threads"] / start["threads"]))
    print("after the burst of %d: rss %.3f of the start" % (opts.burst, end["rss"] / start["rss"]))
    print(target_line("RSS growth at most 2%% over %d cycles" % opts.cycles, rss <= 1.02,
                      "x%.3f" % rss))
    print(target_line("fds and threads flat (cycles and burst)",
                      end["fds"] <= start["fds"] and end["threads"] <= start["threads"]
                      and after_cycles["fds"] <= start["fds"]
                      and after_cycles["threads"] <= start["threads"],
                      "fds %d -> %d, threads %d -> %d" % (start["fds"], end["fds"],
                                                          start["threads"], end["threads"])))
    # The start is after the warm-up: the bridge's gateway address (a host
    # address in the ipcache) exists from the first pod on, by design.
    grown = {m: (start["maps"].get(m, 0), n) for m, n in end["maps"].items()
             if n != start["maps"].get(m, 0)}
    print(target_line("every map back to its entries at the start", not grown,
                      ", ".join("%s %d -> %d" % (m, a, b) for m, (a, b) in sorted(grown.items()))
                      or "all equal"))


if __name__ == "__main__":
    main()
