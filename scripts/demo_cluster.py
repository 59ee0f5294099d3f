"""The cluster demo (`scripts/demo --nodes N`): N nodes sharing a 3-member
etcd cluster (`kvstore: etcd`), a policy between pods of different nodes
allowed and denied, and a service whose backends are pods on two nodes.

Built on scripts/clusterlab.py: every node is a network namespace with its
own agent, prior plugin (bridge + host-local) and routes to the others'
pod CIDRs; everything is removed at the end, even on failure, and what is
left (nothing) is printed.
"""

import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scripts import clusterlab  # noqa: E402
from tests import lab  # noqa: E402

POLICY = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
"""


def step(text):
    print("\n== %s" % text, flush=True)


def show(node, *args):
    out = node.cli(*args, check=False)
    print(out.stdout.rstrip() or out.stderr.rstrip())


def verdict(ns, addr, port):
    return "answered" if lab.talks(ns, "tcp", addr, port) else "dropped"


def main(nodes=3):
    if nodes < 2:
        raise SystemExit("a cluster demo needs at least 2 nodes")
    servers = []
    prefix = None
    step("starting %d nodes (a netns and an agent each) and a 3-member etcd cluster" % nodes)
    with clusterlab.Cluster(nodes=nodes, node_config=clusterlab.kvstore_config()) as c:
        prefix = c.prefix
        try:
            print("etcd: %s" % ", ".join(c.etcd.endpoints()))
            print("up in %.1f s" % c.timings["up"])
            first, second, last = c.nodes[0], c.nodes[1], c.nodes[-1]
            step("cilium-cni node list (on %s)" % last.name)
            show(last, "node", "list")

            web = first.add_pod("web", labels={"app": "web"})
            web2 = second.add_pod("web2", labels={"app": "web"})
            client = last.add_pod("client", labels={"app": "client"})
            intruder = last.add_pod("intruder", labels={"app": "intruder"})
            for node, pod in ((first, web), (second, web2), (last, client), (last, intruder)):
                print("pod %-8s on %s: %s" % (pod.name, node.name, pod.ip))
            for pod in (web, web2):
                servers.append(lab.EchoServer(pod.netns, "tcp", 8080))
            step("one identity per label set on every node")
            for node in c.nodes:
                ids = {e["labels"][0]: e["identity"] for e in node.agent.endpoints()}
                print("%s: %s" % (node.name, json.dumps(ids, sort_keys=True)))

            step("policy imported on %s only: web accepts only app=client on TCP 8080"
                 % second.name)
            path = os.path.join(tempfile.mkdtemp(prefix="%s-" % c.prefix), "web.yaml")
            with open(path, "w") as f:
                f.write(POLICY)
            show(second, "policy", "import", path)
            for node in c.nodes:
                view = node.agent.api("GET", "/v1/policy")[1]
                print("%s: policy revision %d, %s" % (node.name, view["revision"],
                                                      [r["source"] for r in view["rules"]]))
            lab.talks(client.netns, "tcp", web.ip, 8080)  # warm up the path
            for who, pod in (("client", client), ("intruder", intruder)):
                print("%-8s (%s) -> web (%s) TCP 8080: %s" % (
                    who, last.name, first.name, verdict(pod.netns, web.ip, 8080)))

            step("policy deleted on %s: lifted on every node" % first.name)
            show(first, "policy", "delete", "--all")
            print("intruder (%s) -> web (%s) TCP 8080: %s" % (
                last.name, first.name, verdict(intruder.netns, web.ip, 8080)))

            step("a service made on %s, backends web on %s and web2 on %s"
                 % (last.name, first.name, second.name))
            show(last, "service", "update", "--frontend", "10.96.77.1:80", "--backends",
                 "%s:8080,%s:8080" % (web.ip, web2.ip))
            for node in c.nodes:
                print("%s: %s" % (node.name, [s["key"] for s in
                                              node.agent.api("GET", "/v1/services")[1]]))
            print("client (%s) -> 10.96.77.1:80: %s" % (
                last.name, verdict(client.netns, "10.96.77.1", 80)))
            hosts = [n.run("python3", "-c", lab.ECHO_CLIENT, "tcp", "10.96.77.1", "80", "1.5",
                           check=False).stdout.strip() for n in c.nodes]
            print("host processes of every node -> 10.96.77.1:80: %s" % ", ".join(hosts))

            step("cilium-cni status (kvstore part) on %s" % first.name)
            status = first.agent.api("GET", "/v1/status")[1]["kvstore"]
            print(json.dumps({k: status[k] for k in ("node", "reachable", "leader", "nodes",
                                                     "revision", "policyRevision")}, indent=1))
            step("keys under the cluster's prefix")
            for key in sorted(c.etcd.get_prefix(c.prefix + "/"))[:20]:
                print(key)

            step("tearing down: DEL every pod")
            for node in c.nodes:
                for name in list(node.pods):
                    node.delete_pod(name)
                    print("DEL %s on %s ok" % (name, node.name))
        finally:
            for server in servers:
                server.stop()
    left = clusterlab.leftovers(prefix) if prefix else []
    step("left behind: %s" % (", ".join(map(str, left)) or "nothing"))
    return 1 if left else 0
