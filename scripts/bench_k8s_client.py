"""Benchmark: the two Kubernetes client libraries against the stand-in API server.

For `lightkube` and the official `kubernetes` client, each in a fresh child
process (so that import cost and memory are its own): the import's time
(median of --imports runs, each a new interpreter), a list of --pods pods
across all namespaces both as the library's typed models and as raw JSON
through the same library's transport, the memory the typed list holds
(tracemalloc peak and RSS growth), and the latency from a pod written on the
server to the watch event in the client's hands (median and p99 of
--events). A client that is not installed is reported as such; the project
installs only the chosen one (docs/kubernetes.md says why), so compare with
`.venv/bin/pip install kubernetes` first.

    .venv/bin/python scripts/bench_k8s_client.py [--pods 10000] [--events 100] [--smoke]
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

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from scripts import benchlib  # noqa: E402

CLIENTS = {"lightkube": "lightkube", "kubernetes": "kubernetes"}


def pod(i):
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "pod-%d" % i, "namespace": "ns-%d" % (i % 20),
                         "labels": {"app": "app-%d" % (i % 100), "tier": "web",
                                    "pod-template-hash": "abc%d" % (i % 7)}},
            "spec": {"containers": [{"name": "main", "image": "busybox:1.36",
                                     "ports": [{"containerPort": 8080, "protocol": "TCP"}]}],
                     "serviceAccountName": "default", "nodeName": "node-1"},
            "status": {"phase": "Running", "podIP": "10.%d.%d.%d" % (
                i // 65536 % 256, i // 256 % 256, i % 256)}}


def rss_kb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# ---- the child: one client ------------------------------------------------------------------

def child_lightkube(kubeconfig, events, control):
    import tracemalloc

    from lightkube import Client, KubeConfig
    from lightkube.resources.core_v1 import Pod
    client = Client(config=KubeConfig.from_file(kubeconfig))
    out = {}
    t = time.perf_counter()
    raw = client._client._client.get("/api/v1/pods").json()  # the same httpx transport
    out["list_raw_s"] = time.perf_counter() - t
    out["count"] = len(raw["items"])
    del raw
    before = rss_kb()
    tracemalloc.start()
    t = time.perf_counter()
    pods = client.list(Pod, namespace="*")
    items = list(pods)
    # touch every label, as an informer would
    n = sum(len(p.metadata.labels) for p in items)
    out["list_typed_s"] = time.perf_counter() - t
    out["typed_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    out["typed_rss_mb"] = (rss_kb() - before) / 1024
    assert n and len(items) == out["count"]
    rv = pods.resourceVersion
    del items
    out["watch_ms"] = _watch_latency(
        lambda: client.watch(Pod, namespace="*", resource_version=rv), events, control,
        lambda ev: ev[1].metadata.name)
    return out


def child_kubernetes(kubeconfig, events, control):
    import tracemalloc

    from kubernetes import client as kclient
    from kubernetes import config, watch
    config.load_kube_config(config_file=kubeconfig)
    v1 = kclient.CoreV1Api()
    out = {}
    t = time.perf_counter()
    raw = json.loads(v1.list_pod_for_all_namespaces(_preload_content=False).data)
    out["list_raw_s"] = time.perf_counter() - t
    out["count"] = len(raw["items"])
    del raw
    before = rss_kb()
    tracemalloc.start()
    t = time.perf_counter()
    pods = v1.list_pod_for_all_namespaces()
    n = sum(len(p.metadata.labels) for p in pods.items)
    out["list_typed_s"] = time.perf_counter() - t
    out["typed_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    out["typed_rss_mb"] = (rss_kb() - before) / 1024
    assert n and len(pods.items) == out["count"]
    rv = pods.metadata.resource_version
    del pods
    out["watch_ms"] = _watch_latency(
        lambda: watch.Watch().stream(v1.list_pod_for_all_namespaces, resource_version=rv,
                                     allow_watch_bookmarks=True),
        events, control, lambda ev: ev["object"].metadata.name)
    return out


def _watch_latency(start_stream, events, control, name_of):
    """Asks the parent (over the control pipe) to write pod `w-i`; the time
    until this process's watch yields it."""
    stream = start_stream()
    latencies = []
    for i in range(events):
        control.write("w-%d\n" % i)
        control.flush()
        t = time.perf_counter()
        for ev in stream:
            if name_of(ev) == "w-%d" % i:
                break
        latencies.append((time.perf_counter() - t) * 1000)
    return latencies


def child_main(name, kubeconfig, events, imports):
    times = []
    for _ in range(imports):
        proc = subprocess.run([sys.executable, "-c", "import time; t = time.perf_counter(); "
                               "import %s; print(time.perf_counter() - t)" % {
                                   "lightkube": "lightkube, lightkube.resources.core_v1",
                                   "kubernetes": "kubernetes.client, kubernetes.watch"}[name]],
                              capture_output=True, text=True, check=True)
        times.append(float(proc.stdout))
    out = {"import_s": statistics.median(times)}
    out.update({"lightkube": child_lightkube, "kubernetes": child_kubernetes}[name](
        kubeconfig, events, sys.stdout))
    sys.stdout.write("RESULT " + json.dumps(out) + "\n")
    sys.stdout.flush()


# ---- the parent: the server and the report --------------------------------------------------

def run_client(name, server, kubeconfig, opts):
    proc = subprocess.Popen([sys.executable, __file__, "--child", name, "--kubeconfig",
                             kubeconfig, "--events", str(opts.events), "--imports",
                             str(opts.imports)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    result = None
    for line in proc.stdout:
        if line.startswith("RESULT "):
            result = json.loads(line[7:])
        elif line.startswith("w-"):
            obj = pod(10**6 + len(line))
            obj["metadata"]["name"] = line.strip()
            obj["metadata"]["namespace"] = "watch-" + name
            server.create(obj)
    proc.wait()
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=10000)
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--imports", type=int, default=5)
    parser.add_argument("--child")
    parser.add_argument("--kubeconfig")
    opts = benchlib.parse_args(parser, {"pods": 50, "events": 5, "imports": 1})
    if opts.child:
        return child_main(opts.child, opts.kubeconfig, opts.events, opts.imports)

    from tests.k8s.apiserver import ApiServer
    benchlib.print_machine()
    server = ApiServer(history=opts.pods + opts.events * 4 + 10).start()
    t = time.perf_counter()
    for i in range(opts.pods):
        server.create(pod(i))
    print("stand-in: %d pods stored (validated) in %.1f s" % (opts.pods,
                                                               time.perf_counter() - t))
    with tempfile.TemporaryDirectory() as tmp:
        kubeconfig = server.write_kubeconfig(os.path.join(tmp, "kubeconfig"))
        print("%-11s %9s %12s %14s %13s %12s %14s %12s" % (
            "client", "import s", "list raw s", "list typed s", "typed MB py",
            "typed MB rss", "watch p50 ms", "watch p99 ms"))
        for name in CLIENTS:
            found = subprocess.run([sys.executable, "-c", "import %s" % name],
                                   capture_output=True).returncode == 0
            if not found:
                print("%-11s not installed (pip install %s to compare)" % (name, name))
                continue
            r = run_client(name, server, kubeconfig, opts)
            if r is None:
                print("%-11s failed" % name)
                continue
            w = r["watch_ms"]
            print("%-11s %9.3f %12.3f %14.3f %13.1f %12.1f %14.2f %12.2f" % (
                name, r["import_s"], r["list_raw_s"], r["list_typed_s"], r["typed_peak_mb"],
                r["typed_rss_mb"], statistics.median(w), benchlib.p99(w)))
    server.stop()
    threading.Event().wait(0)


if __name__ == "__main__":
    main()
