"""Valid API objects for the k8s tests."""


def pod(name, namespace="default", labels=None, ip="10.1.0.1"):
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
            "spec": {"containers": [{"name": "main", "image": "busybox:1.36"}]},
            "status": {"phase": "Running", "podIP": ip}}


def cnp(name, namespace="default", app="web"):
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"endpointSelector": {"matchLabels": {"app": app}},
                     "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "client"}}]}]}}


def ccnp(name, app="web"):
    obj = cnp(name, app=app)
    obj["kind"] = "CiliumClusterwideNetworkPolicy"
    del obj["metadata"]["namespace"]
    return obj
