"""The Kubernetes documentation's NetworkPolicy examples and the verdicts
the documentation states for them, shared by the translation's unit tests
(judged by the reference verdict over the parsed rules) and its datapath
tests (judged by the loaded programs through BPF_PROG_TEST_RUN).

The fixtures (tests/fixtures/k8s/netpol/) are the examples of the page
"Network Policies" (kubernetes.io/docs/concepts/services-networking/
network-policies/). The world: four namespaces and their labels, pods
carrying their own labels, their namespace and its labels as the agent
gives them (`k8s:` labels, Cilium's `io.cilium.k8s.namespace.labels.`
convention), and addresses outside the cluster.
"""

import os

import yaml

from agent import labels as L
from tests import lab

FIXTURES = os.path.join(lab.REPO, "tests", "fixtures", "k8s", "netpol")
TCP, UDP, ICMP = 6, 17, 1
ALLOW, DENIED = "allow", "policy-denied"

NAMESPACES = {
    "default": {},
    "myns": {"project": "myproject", "user": "alice"},
    "other": {"user": "bob"},
    "monitoring": {},
}


def pod_labels(namespace, **labels):
    """A pod's label set as the agent builds it from the Pod and Namespace objects."""
    ns_labels = dict(NAMESPACES[namespace], **{"kubernetes.io/metadata.name": namespace})
    out = {(L.SOURCE_K8S, k, v) for k, v in labels.items()}
    out |= {(L.SOURCE_K8S, L.namespace_labels_key(k), v) for k, v in ns_labels.items()}
    out.add(L.namespace_label(namespace))
    return frozenset(out)


# name -> (labels, address); the local endpoint of a case is one of them.
PODS = {
    "db": (pod_labels("default", role="db"), "10.1.2.20"),
    "web": (pod_labels("default", app="web"), "10.1.2.21"),
    "frontend": (pod_labels("default", role="frontend"), "10.1.2.10"),
    "client": (pod_labels("default", role="client"), "10.1.2.11"),
    "frontend-other": (pod_labels("other", role="frontend"), "10.1.3.10"),
    "client-other": (pod_labels("other", role="client"), "10.1.3.11"),
    "myproject": (pod_labels("myns", app="api"), "10.1.4.10"),
    "client-alice": (pod_labels("myns", role="client"), "10.1.4.11"),
    "prometheus": (pod_labels("monitoring", app="prometheus"), "10.1.5.10"),
    "web-other": (pod_labels("other", app="web"), "10.1.3.12"),
}

# (fixture, local pod, [(direction, remote pod name or address, proto, port, verdict)]):
# the verdicts are the page's statements, written out, not computed.
CASES = [
    ("test-network-policy", "db", [
        # "allows connections ... on TCP port 6379 from any pod in the default
        # namespace with the label role=frontend"
        ("ingress", "frontend", TCP, 6379, ALLOW),
        ("ingress", "frontend", TCP, 6380, DENIED),
        ("ingress", "frontend", UDP, 6379, DENIED),
        ("ingress", "frontend-other", TCP, 6379, DENIED),  # role=frontend, but elsewhere
        ("ingress", "web", TCP, 6379, DENIED),
        # "any pod in a namespace with the label project=myproject"
        ("ingress", "myproject", TCP, 6379, ALLOW),
        ("ingress", "client-alice", TCP, 6379, ALLOW),
        ("ingress", "client-other", TCP, 6379, DENIED),
        # "IP addresses in the ranges 172.17.0.0-172.17.0.255 and
        # 172.17.2.0-172.17.255.255"
        ("ingress", "172.17.0.5", TCP, 6379, ALLOW),
        ("ingress", "172.17.0.255", TCP, 6379, ALLOW),
        ("ingress", "172.17.1.5", TCP, 6379, DENIED),
        ("ingress", "172.17.1.255", TCP, 6379, DENIED),
        ("ingress", "172.17.2.0", TCP, 6379, ALLOW),
        ("ingress", "172.17.255.255", TCP, 6379, ALLOW),
        ("ingress", "172.18.0.1", TCP, 6379, DENIED),
        ("ingress", "172.17.0.5", TCP, 22, DENIED),
        ("ingress", "172.17.0.5", ICMP, 0, DENIED),
        # "allows connections from any pod ... role=db to CIDR 10.0.0.0/24
        # on TCP port 5978"
        ("egress", "10.0.0.7", TCP, 5978, ALLOW),
        ("egress", "10.0.0.255", TCP, 5978, ALLOW),
        ("egress", "10.0.0.7", TCP, 5979, DENIED),
        ("egress", "10.0.0.7", UDP, 5978, DENIED),
        ("egress", "10.0.1.7", TCP, 5978, DENIED),
        ("egress", "frontend", TCP, 5978, DENIED),
        ("egress", "8.8.8.8", UDP, 53, DENIED),
    ]),
    # "isolates role=db pods": other pods of the namespace stay open.
    ("test-network-policy", "web", [
        ("ingress", "8.8.8.8", TCP, 80, ALLOW),
        ("ingress", "frontend-other", UDP, 6379, ALLOW),
        ("egress", "8.8.8.8", TCP, 443, ALLOW),
    ]),
    ("default-deny-ingress", "web", [
        ("ingress", "frontend", TCP, 80, DENIED),
        ("ingress", "client-other", TCP, 80, DENIED),
        ("ingress", "8.8.8.8", UDP, 53, DENIED),
        ("ingress", "8.8.8.8", ICMP, 0, DENIED),
        # "does not change the default egress isolation behavior"
        ("egress", "8.8.8.8", TCP, 443, ALLOW),
        ("egress", "frontend", TCP, 80, ALLOW),
    ]),
    # A namespaced policy: pods of other namespaces are not selected.
    ("default-deny-ingress", "web-other", [
        ("ingress", "frontend", TCP, 80, ALLOW),
        ("ingress", "8.8.8.8", UDP, 53, ALLOW),
    ]),
    ("allow-all-ingress", "web", [
        ("ingress", "frontend", TCP, 80, ALLOW),
        ("ingress", "client-other", UDP, 53, ALLOW),
        ("ingress", "8.8.8.8", TCP, 65535, ALLOW),
        ("ingress", "8.8.8.8", ICMP, 0, ALLOW),
        ("egress", "8.8.8.8", TCP, 443, ALLOW),
    ]),
    ("default-deny-egress", "web", [
        ("egress", "frontend", TCP, 80, DENIED),
        ("egress", "8.8.8.8", UDP, 53, DENIED),
        ("egress", "10.0.0.7", ICMP, 0, DENIED),
        # "does not change the default ingress isolation behavior"
        ("ingress", "8.8.8.8", TCP, 80, ALLOW),
        ("ingress", "client-other", TCP, 80, ALLOW),
    ]),
    ("allow-all-egress", "web", [
        ("egress", "frontend", TCP, 80, ALLOW),
        ("egress", "8.8.8.8", UDP, 53, ALLOW),
        ("egress", "10.0.0.7", ICMP, 0, ALLOW),
        ("ingress", "8.8.8.8", TCP, 80, ALLOW),
    ]),
    ("default-deny-all", "web", [
        ("ingress", "frontend", TCP, 80, DENIED),
        ("ingress", "8.8.8.8", UDP, 53, DENIED),
        ("egress", "frontend", TCP, 80, DENIED),
        ("egress", "8.8.8.8", ICMP, 0, DENIED),
    ]),
    ("allow-egress-deny-ingress", "web", [
        ("ingress", "frontend", TCP, 80, DENIED),
        ("ingress", "8.8.8.8", UDP, 53, DENIED),
        ("egress", "frontend", TCP, 80, ALLOW),
        ("egress", "8.8.8.8", ICMP, 0, ALLOW),
    ]),
    # "allows ... to communicate with any IP within the range 10.0.0.0/24
    # over TCP, provided that the target port is between 32000 and 32768"
    ("multi-port-egress", "db", [
        ("egress", "10.0.0.7", TCP, 32000, ALLOW),
        ("egress", "10.0.0.7", TCP, 32500, ALLOW),
        ("egress", "10.0.0.7", TCP, 32767, ALLOW),
        ("egress", "10.0.0.7", TCP, 32768, ALLOW),
        ("egress", "10.0.0.7", TCP, 31999, DENIED),
        ("egress", "10.0.0.7", TCP, 32769, DENIED),
        ("egress", "10.0.0.7", UDP, 32000, DENIED),
        ("egress", "10.0.1.7", TCP, 32000, DENIED),
        ("egress", "frontend", TCP, 32000, DENIED),
        ("ingress", "8.8.8.8", TCP, 80, ALLOW),  # Egress only
    ]),
    # "a single from element allowing connections from Pods with the label
    # role=client in namespaces with the label user=alice"
    ("namespace-and-pod-selector", "web", [
        ("ingress", "client-alice", TCP, 80, ALLOW),
        ("ingress", "client-alice", UDP, 5353, ALLOW),
        ("ingress", "myproject", TCP, 80, DENIED),
        ("ingress", "client", TCP, 80, DENIED),
        ("ingress", "client-other", TCP, 80, DENIED),
        ("ingress", "8.8.8.8", TCP, 80, DENIED),
        ("egress", "8.8.8.8", TCP, 443, ALLOW),  # no policyTypes, no egress rules: Ingress only
    ]),
    # "allows connections from Pods in the local Namespace with the label
    # role=client, or from any Pod in any namespace with the label user=alice"
    ("namespace-or-pod-selector", "web", [
        ("ingress", "client", TCP, 80, ALLOW),
        ("ingress", "client-alice", TCP, 80, ALLOW),
        ("ingress", "myproject", UDP, 53, ALLOW),
        ("ingress", "client-other", TCP, 80, DENIED),
        ("ingress", "frontend", TCP, 80, DENIED),
        ("ingress", "8.8.8.8", TCP, 80, DENIED),
    ]),
    # "you can use the standardized label to target a specific namespace"
    ("namespace-by-name", "web", [
        ("ingress", "prometheus", TCP, 9090, ALLOW),
        ("ingress", "client-other", TCP, 9090, DENIED),
        ("ingress", "frontend", TCP, 9090, DENIED),
        ("ingress", "8.8.8.8", TCP, 9090, DENIED),
    ]),
]


def fixture_names():
    return sorted(n[:-len(".yaml")] for n in os.listdir(FIXTURES) if n.endswith(".yaml"))


def load(name):
    with open(os.path.join(FIXTURES, name + ".yaml")) as f:
        return yaml.safe_load(f)


def remote(name_or_address):
    """(labels, address) of a pod, or (None, address) outside the cluster."""
    if name_or_address in PODS:
        return PODS[name_or_address]
    return None, name_or_address


def case_id(case):
    return "%s-from-%s" % (case[0], case[1])
