"""Benchmark: what each attached set of socket hooks costs every connect() on the node.

The agent's socket load-balancing attaches eight cgroup programs (connect,
sendmsg, recvmsg, getpeername; IPv4 and IPv6) to its cgroup root, and a
stopped agent leaves them attached on purpose (traffic keeps its services
during a restart). A set that no agent owns any more (its pins removed by
hand, an agent run with a throw-away --bpf-root) is an orphan: it stays on
every connect() of every process below that cgroup. This measures how much.

In one run, for 0, 1, 4 and 16 (`--sets`) hook sets: a cgroup of its own
below the cgroup v2 root (the machine's other processes are not affected)
with that many sets attached, each by a real agent started with socket-lb
on that cgroup and stopped (SIGTERM leaves its set attached); a loopback
TCP server outside them; and a client process placed in the cgroup making
`--conns` connects (each then accepted and closed by the server): median
microseconds per connect() call, client and server pinned to different CPUs.
Rounds go over the cgroups in rotating order (`--reps`). Removing a cgroup
at the end detaches every set on it; the agents' pins and state go too.

    .venv/bin/python scripts/bench_hooks.py [--sets 0,1,4,16] [--reps 7] [--conns 3000] [--smoke]
"""

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scripts.benchlib import parse_args, print_machine, target_line  # noqa: E402
from tests import lab  # noqa: E402

CGROUP2 = "/sys/fs/cgroup/unified"
SERVER_CPU, CLIENT_CPU = 0, 1

CLIENT = r"""
import os, socket, statistics, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
os.sched_setaffinity(0, {int(sys.argv[3])})
times = []
for _ in range(n):
    s = socket.socket()
    t0 = time.perf_counter()
    s.connect(("127.0.0.1", port))  # the cgroup's connect4 hooks run in here
    times.append((time.perf_counter() - t0) * 1e6)
    s.recv(1)  # the server accepted, sent a byte and closed
    s.close()
print(statistics.median(times))
"""

def serve(listener, stop):
    """Accept, send one byte (the client waits for the accept), close."""
    while not stop.is_set():
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        conn.sendall(b"x")
        conn.close()


def measure(cgroup, port, conns):
    """Median µs per connect() of a client started inside `cgroup`, on
    another CPU than the server's."""
    def enter():
        with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
    out = subprocess.run([sys.executable, "-c", CLIENT, str(port), str(conns), str(CLIENT_CPU)],
                         check=True, capture_output=True, text=True, preexec_fn=enter,
                         timeout=300)
    return float(out.stdout)


def attached_sets(cgroup):
    """The connect4 hooks attached to `cgroup` itself (bpftool observes)."""
    out = lab.sh("bpftool", "cgroup", "show", cgroup).stdout
    return sum(1 for line in out.splitlines() if "connect4" in line)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="0,1,4,16", help="hook-set counts (ascending)")
    parser.add_argument("--reps", type=int, default=7, help="rounds over the counts")
    parser.add_argument("--conns", type=int, default=3000, help="connects per measurement")
    opts = parse_args(parser, {"sets": "0,1", "reps": 1, "conns": 50})
    counts = sorted(int(x) for x in opts.sets.split(","))
    print_machine()
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("needs 2 CPUs (client and server are pinned apart)")
    os.sched_setaffinity(0, {SERVER_CPU})  # the server thread runs in this process
    if not os.path.isfile(os.path.join(CGROUP2, "cgroup.procs")):
        raise SystemExit("no cgroup v2 hierarchy at %s" % CGROUP2)

    work = tempfile.mkdtemp(prefix="cilium-cni-bench-hooks-")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(512)
    port = listener.getsockname()[1]
    stop = threading.Event()
    threading.Thread(target=serve, args=(listener, stop), daemon=True).start()
    agents, cgroups, samples = [], {}, {n: [] for n in counts}
    try:
        for n in counts:
            cgroups[n] = os.path.join(CGROUP2, lab.unique("ccni-bench-hooks-"))
            os.mkdir(cgroups[n])
            config = os.path.join(work, "agent-%d.yaml" % n)
            with open(config, "w") as f:
                f.write("cgroup-root: %s\n" % cgroups[n])
            for _ in range(n):  # a real agent's set, left attached by its stop
                agent = lab.Agent(os.path.join(work, "agent%d" % len(agents)), config=config,
                                  socket_lb=True)
                agents.append(agent)
                agent.start()
                agent.stop()
            if attached_sets(cgroups[n]) != n:
                raise RuntimeError("%d hook sets attached to %s, want %d"
                                   % (attached_sets(cgroups[n]), cgroups[n], n))
        for rep in range(opts.reps):
            for n in counts[rep % len(counts):] + counts[:rep % len(counts)]:
                samples[n].append(measure(cgroups[n], port, opts.conns))
    finally:
        stop.set()
        listener.close()
        for path in cgroups.values():
            try:
                os.rmdir(path)  # detaches every set attached to it
            except OSError as exc:
                print("could not remove %s: %s" % (path, exc), file=sys.stderr)
        for agent in agents:
            agent.cleanup()
        lab.sh("rm", "-rf", work)

    base = statistics.median(samples[counts[0]])
    print("connect() on loopback (the client's side), %d per measurement, %d round(s)"
          % (opts.conns, opts.reps))
    print("%-10s %12s %10s" % ("hook sets", "median µs", "ratio"))
    for n in counts:
        med = statistics.median(samples[n])
        print("%-10d %12.1f %10.3f" % (n, med, med / base))
    if len(counts) > 1:
        hi = counts[-1]
        per_set = (statistics.median(samples[hi]) - base) / (hi - counts[0])
        print("per extra hook set: %.2f µs per connect (%.1f%% of %.1f µs)"
              % (per_set, 100 * per_set / base, base))
        print(target_line("a live agent's one hook set costs a connect at most 10%",
                          1 in samples and statistics.median(samples[1]) <= 1.10 * base,
                          "x%.3f" % (statistics.median(samples[1]) / base) if 1 in samples
                          else "no 1-set measurement"))


if __name__ == "__main__":
    main()
