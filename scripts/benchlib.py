"""What every benchmark script prints the same way: the machine, the targets,
a p99, a timed plugin call, and the bridge network the plugin chains after.

A figure means little without the machine it came from (the ADD ratio
against Go `bridge` was 1.5x on one machine and 2.2x on another with the
same code), so each script starts with `machine_line()`; each target is one
`target_line()`, met or not, so a reader (and tests/bench/test_smoke.py)
finds them. No speed is asserted anywhere: targets are reported, never
enforced.
"""

import json
import os
import platform
import subprocess
import time


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_line():
    """'machine: 2026-12-06 03:10 UTC, Linux 6.18.44, <CPU> x 2 cores, load 0.52'."""
    load = os.getloadavg()[0]
    return "machine: %s, Linux %s, %s x %d cores, load %.2f" % (
        time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), platform.release(), _cpu_model(),
        os.cpu_count() or 0, load)


def print_machine():
    print(machine_line(), flush=True)


def parse_args(parser, smoke):
    """The options, with `--smoke` setting each of `smoke` ({option: value})
    to its smallest size: the command works, its figures mean nothing."""
    parser.add_argument("--smoke", action="store_true", help="the smallest run (%s): the "
                        "command works, figures mean nothing" % ", ".join(
                            "--%s %s" % (k.replace("_", "-"), v) for k, v in smoke.items()))
    opts = parser.parse_args()
    if opts.smoke:
        for option, value in smoke.items():
            setattr(opts, option, value)
    return opts


def remove_lab(agent, namespaces, bridges, work):
    """What a benchmark made: its agent, pods, bridges and work directory."""
    agent.cleanup()
    for ns in namespaces:
        ns.remove()
    for bridge in bridges:
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)
    subprocess.run(["rm", "-rf", work], capture_output=True)


def cilium_netconf(name, socket, log_file):
    """cilium-cni's own netconf (generic-veth) for a chain the benchmark runs by hand."""
    return {"cniVersion": "1.0.0", "name": name, "type": "cilium-cni",
            "chaining-mode": "generic-veth", "agent-socket": socket, "log-file": log_file}


def target_line(what, met, figure):
    """'target: <what>: met (<figure>)' or '... not met (...)'."""
    return "target: %s: %s (%s)" % (what, "met" if met else "not met", figure)


def p99(values):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]


def timed_plugin(binary, command, netconf, cid, netns, cni_path):
    """(wall ms, parsed stdout or None) of one CNI call, process start included."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": command,
           "CNI_CONTAINERID": cid, "CNI_NETNS": netns, "CNI_IFNAME": "eth0",
           "CNI_PATH": cni_path}
    data = json.dumps(netconf)
    t0 = time.perf_counter()
    proc = subprocess.run([binary], input=data, capture_output=True, text=True, env=env)
    elapsed = (time.perf_counter() - t0) * 1000
    if proc.returncode != 0:
        raise RuntimeError("%s %s failed: %s %s" % (binary, command, proc.stdout, proc.stderr))
    return elapsed, (json.loads(proc.stdout) if proc.stdout.strip() else None)


def bridge_net(name, bridge, subnet, data_dir):
    """Debian's `bridge` plugin with host-local IPAM: the prior plugin of the benchmarks."""
    return {"cniVersion": "1.0.0", "name": name, "type": "bridge", "bridge": bridge,
            "isGateway": True, "ipMasq": False,
            "ipam": {"type": "host-local", "subnet": subnet, "dataDir": data_dir}}
