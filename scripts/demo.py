"""The demo: bridge -> cilium-cni on two pods, traffic counted in eBPF, then teardown.

Run through scripts/demo (which installs what is missing first). Everything
it creates lives under unique names and is removed at the end, even on
failure: the agent (by pid), namespaces, the bridge, pins and temp dirs.
"""

import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests import lab  # noqa: E402  (the same libcni-like runner the tests use)

POLICY = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: demo}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
"""


def step(text):
    print("\n== %s" % text, flush=True)


def cli(*args):
    proc = subprocess.run([lab.PLUGIN_BIN, *args], capture_output=True, text=True)
    print(proc.stdout.rstrip())
    if proc.stderr.strip():
        print(proc.stderr.rstrip())
    return proc.returncode


def main():
    work = tempfile.mkdtemp(prefix="cilium-cni-demo-")
    agent = lab.Agent(work, bpf_root="/sys/fs/bpf/%s" % lab.unique("cilium-cni-demo-"))
    bridge = lab.unique("ccdemo")
    conf_dir = os.path.join(work, "net.d")
    bin_dir = os.path.join(work, "bin")
    os.makedirs(conf_dir)
    os.makedirs(bin_dir)
    os.symlink(lab.PLUGIN_BIN, os.path.join(bin_dir, "cilium-cni"))
    cni_path = "%s:%s" % (bin_dir, lab.REFERENCE_PLUGINS)
    conflist = lab.bridge_conflist("demo-net", bridge, "10.213.250.0/24",
                                   os.path.join(work, "ipam"), agent.socket)
    with open(os.path.join(conf_dir, "10-demo.conflist"), "w") as f:
        json.dump(conflist, f, indent=2)
    chain = lab.Chain(conflist, cni_path)
    pods = []
    servers = []
    try:
        step("starting the agent (bpf root %s)" % agent.bpf_root)
        agent.start()
        print("agent pid %d on %s" % (agent.proc.pid, agent.socket))

        step("conflist: %s" % " -> ".join(p["type"] for p in conflist["plugins"]))
        print(json.dumps(conflist["plugins"][-1], indent=2))

        for name in ("web", "client", "intruder"):
            ns = lab.Netns()
            result = chain.add("demo-%s" % name, ns.path, labels={"app": name},
                               cni_args="K8S_POD_NAMESPACE=demo;K8S_POD_NAME=%s" % name)
            ip = result["ips"][0]["address"]
            pods.append((name, ns, ip.split("/")[0]))
            step("pod %s: ADD returned the bridge's result, eth0 %s" % (name, ip))

        (_, web_ns, web_ip), (_, client_ns, _), (_, intruder_ns, _) = pods
        step("endpoints before traffic")
        cli("endpoint", "list", "--socket", agent.socket)

        step("client -> web: ping -c 5 %s" % web_ip)
        out = client_ns.run("ping", "-c", "5", "-i", "0.2", web_ip, check=False)
        print(out.stdout.strip().splitlines()[-2])
        step("endpoints after traffic: the eBPF programs on each host veth counted it")
        cli("endpoint", "list", "--socket", agent.socket)

        step("policy: web accepts only app=client, on TCP 8080")
        policy = os.path.join(work, "web.yaml")
        with open(policy, "w") as f:
            f.write(POLICY)
        print(POLICY.strip())
        cli("policy", "import", policy, "--socket", agent.socket)
        servers.append(lab.EchoServer(web_ns, "tcp", 8080))
        for who, ns in (("client", client_ns), ("intruder", intruder_ns)):
            print("%-8s -> web TCP 8080: %s" % (
                who, "answered" if lab.talks(ns, "tcp", web_ip, 8080) else "dropped"))
        print("%-8s -> web ping:     %s" % ("client", "answered" if client_ns.run(
            "ping", "-c", "1", "-W", "1", web_ip, check=False).returncode == 0 else "dropped"))
        step("what the datapath holds for web, and its drop counters")
        cli("bpf", "policy", "get", "demo-web:eth0", "--socket", agent.socket)
        cli("identity", "list", "--endpoints", "--socket", agent.socket)
        ep = json.loads(subprocess.run(
            [lab.PLUGIN_BIN, "endpoint", "get", "demo-web:eth0", "-o", "json", "--socket",
             agent.socket], capture_output=True, text=True).stdout)
        print("web ingress drops: %s" % ep["stats"]["ingress"]["drops"])

        step("cilium-cni check")
        rc = cli("check", "--conf-dir", conf_dir, "--bin-dir", bin_dir,
                 "--bin-dir", lab.REFERENCE_PLUGINS, "--socket", agent.socket)
        print("check exit code: %d" % rc)

        step("CNI CHECK for pod web (as CRI-O does after ADD)")
        chain.check("demo-web", web_ns.path)
        print("ok")

        step("tearing down: DEL in reverse chain order")
        for name, ns, _ in pods:
            chain.delete("demo-%s" % name, ns.path)
            print("DEL demo-%s ok" % name)
        cli("endpoint", "list", "--socket", agent.socket)
        return 0 if rc == 0 else 1
    finally:
        for server in servers:
            server.stop()
        agent.cleanup()
        for _, ns, _ in pods:
            ns.remove()
        lab.sh("ip", "link", "del", bridge, check=False)
        lab.sh("rm", "-rf", work)
        left = [what for what, present in (
            ("bridge %s" % bridge, lab.sh("ip", "link", "show", bridge, check=False).returncode == 0),
            ("bpf root %s" % agent.bpf_root, os.path.exists(agent.bpf_root)),
            ("work dir %s" % work, os.path.exists(work)),
        ) + tuple(("netns %s" % ns.name, os.path.exists(ns.path)) for _, ns, _ in pods)
            if present]
        step("left behind: %s" % (", ".join(left) or "nothing"))


if __name__ == "__main__":
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1,
                        help="1: one node, no etcd (default); N > 1: a cluster of N nodes "
                             "sharing etcd (scripts/demo_cluster.py)")
    args = parser.parse_args()
    if args.nodes > 1:
        from scripts import demo_cluster
        sys.exit(demo_cluster.main(args.nodes))
    sys.exit(main())
