"""Benchmark: the agent's share of a CNI ADD, phase by phase.

Runs the agent in this process (its real API server, worker, datapath and
store, on a temporary socket, state dir and bpf root), makes N pods with
Debian's `bridge` plugin, and sends each one's endpoint PUT (what the
plugin sends on ADD) and DELETE through the plugin's client. Prints the
PUT and DELETE as the client sees them and, timed around each step inside
the agent, the endpoint create and its phases. Needs root; removes
everything it made.

    .venv/bin/python scripts/bench_agent.py [--pods N] [--compare-host-dump]

`--compare-host-dump` alternates, pod by pod, between the agent's watched
host addresses (datapath.netns.HostPrefixes) and a dump on every ADD (what
the agent did before), and prints create and that phase for each.
The client shares the process with the agent, so its figures are
pessimistic; compare runs of this script with each other.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agent import config as agent_config  # noqa: E402
from agent.main import Agent  # noqa: E402
from cni.client import AgentClient, endpoint_url  # noqa: E402
from datapath import bpffs, netns  # noqa: E402
from scripts.benchlib import bridge_net, parse_args, print_machine  # noqa: E402
from tests import lab  # noqa: E402


def timed(phases, key, fn):
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            phases.setdefault(key, []).append((time.perf_counter() - t0) * 1000)
    return wrapper


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--pods", type=int, default=60)
    parser.add_argument("--compare-host-dump", action="store_true")
    opts = parse_args(parser, {"pods": 2})
    print_machine()
    work = tempfile.mkdtemp(prefix="cilium-cni-bench-agent-")
    bpf_root = "/sys/fs/bpf/%s" % lab.unique("cilium-cni-bench-")
    config = agent_config.load(None, {
        "socket": os.path.join(work, "run", "agent.sock"), "state-dir": os.path.join(work, "state"),
        "bpf-root": bpf_root, "log-file": os.path.join(work, "agent.log"), "log-level": "debug",
        "socket-lb": False, "metrics-address": "127.0.0.1:0"})
    os.makedirs(os.path.dirname(config.socket), exist_ok=True)
    bridge = lab.unique("ccba")
    net = bridge_net("bench-agent", bridge, "10.213.230.0/24", os.path.join(work, "ipam"))
    phases, client_times, by_mode = {}, {"PUT": [], "DELETE": []}, {}
    agent = Agent(config)
    namespaces = []
    try:
        agent.start()
        threading.Thread(target=agent.serve_forever, daemon=True).start()
        netns.inspect_pod_interface = timed(phases, "pod interface and veth peer",
                                            netns.inspect_pod_interface)
        enf, dp = agent.enforcement, agent.datapath
        enf.refresh_host = timed(phases, "host addresses", enf.refresh_host)
        enf.attach_endpoint = timed(phases, "identity, ipcache, policy", enf.attach_endpoint)
        dp.attach = timed(phases, "attach programs", dp.attach)
        dp.attached = timed(phases, "verify programs", dp.attached)
        agent.store.put_endpoint = timed(phases, "sqlite", agent.store.put_endpoint)
        agent.manager.create = timed(phases, "create (all)", agent.manager.create)
        for i in range(opts.pods + 3):  # the first 3 warm caches and are not counted
            ns = lab.Netns()
            namespaces.append(ns)
            cid = "bench%03d" % i
            env = {"PATH": "/usr/bin:/bin", "CNI_COMMAND": "ADD", "CNI_CONTAINERID": cid,
                   "CNI_NETNS": ns.path, "CNI_IFNAME": "eth0", "CNI_PATH": lab.REFERENCE_PLUGINS}
            bridge_bin = os.path.join(lab.REFERENCE_PLUGINS, "bridge")
            prev = json.loads(subprocess.run([bridge_bin], input=json.dumps(net), env=env, check=True,
                                             capture_output=True, text=True).stdout)
            mode = "watched"
            if opts.compare_host_dump and i % 2:
                mode = "dumped every ADD"
            enf._host_prefixes = netns.host_prefixes if mode != "watched" else agent.host_prefixes
            request = {"containerID": cid, "ifname": "eth0", "netns": ns.path,
                       "network": "bench-agent", "chainingMode": "generic-veth",
                       "prevResultAddresses": [ip["address"] for ip in prev.get("ips", [])]}
            seen = len(phases.get("create (all)", []))
            t0 = time.perf_counter()
            status, out = AgentClient(config.socket, command="ADD").request(
                "PUT", endpoint_url(cid, "eth0"), request)
            put = (time.perf_counter() - t0) * 1000
            if status != 201:
                raise RuntimeError("PUT %s: %d %s" % (cid, status, out))
            t0 = time.perf_counter()
            AgentClient(config.socket, command="DEL").request("DELETE", endpoint_url(cid, "eth0"))
            delete = (time.perf_counter() - t0) * 1000
            env["CNI_COMMAND"] = "DEL"
            subprocess.run([bridge_bin], input=json.dumps(dict(net, prevResult=prev)), env=env,
                           capture_output=True, text=True)
            ns.remove()
            if i >= 3:
                client_times["PUT"].append(put)
                client_times["DELETE"].append(delete)
                by_mode.setdefault(mode, {}).setdefault("create", []).append(
                    phases["create (all)"][seen])
                by_mode[mode].setdefault("host addresses", []).append(phases["host addresses"][-1])
    finally:
        agent.stop()
        for ns in namespaces:
            ns.remove()
        lab.sh("ip", "link", "del", bridge, check=False)
        if os.path.isdir(bpf_root):
            bpffs.remove_tree(bpf_root)
        lab.sh("rm", "-rf", work)

    print("pods: %d; load %s" % (opts.pods, " ".join(open("/proc/loadavg").read().split()[:3])))
    for verb, values in client_times.items():
        print("%-28s %8.3f ms (client)" % (verb, statistics.median(values)))
    for key, values in phases.items():
        print("%-28s %8.3f ms" % (key, statistics.median(values[3:])))
    for mode, values in by_mode.items() if opts.compare_host_dump else ():
        print("host addresses %s: create %.3f ms, that phase %.3f ms (%d pods)" % (
            mode, statistics.median(values["create"]), statistics.median(values["host addresses"]),
            len(values["create"])))


if __name__ == "__main__":
    main()
