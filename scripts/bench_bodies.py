"""Benchmark: does the agent give back the memory that large request bodies took?

Starts a real agent process (own socket, state dir and bpf root, prefix
`bb-`) and sends it large `POST /v1/policy` bodies of two kinds:

- valid: a CiliumNetworkPolicy file of `--rules` documents (one rule each,
  ~310 bytes), imported, then deleted again (DELETE ?source=) so that the
  rules themselves are not what stays;
- refused: `--mb` MB of JSON, a policy file of one long string whose body
  is cut before its end: read whole, decoded, then 400.

It prints the agent's VmRSS and VmHWM (/proc/PID/status) at the start,
after one valid import, after one refused body, after `--concurrent`
refused bodies and valid imports at once (the agent admits bodies up to its
160 MB budget and answers the others 503), and `--settle` seconds later,
each with its ratio to the start; and the kinds of memory that hold it
(/proc/PID/smaps_rollup: anonymous, file). Target: the RSS after settling
within 1.2x of the start (the start is after a warm-up import, so the code
paths, caches and threads that live as long as the agent are counted in
it). Needs root; removes everything it made.

    .venv/bin/python scripts/bench_bodies.py [--rules 20000] [--mb 60] [--concurrent 8] [--smoke]
"""

import argparse
import json
import os
import socket
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scripts.benchlib import parse_args, print_machine, remove_lab, target_line  # noqa: E402
from tests import lab  # noqa: E402

TARGET_RATIO = 1.2


def policy_text(rules, tag):
    """`rules` CiliumNetworkPolicy documents, each with one ingress rule."""
    doc = ("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: bb-%s-%d\n"
           "  namespace: default\nspec:\n  endpointSelector:\n    matchLabels:\n"
           "      app: bb-app-%d\n  ingress:\n  - fromEndpoints:\n    - matchLabels:\n"
           "        role: bb-client-%d\n    toPorts:\n    - ports:\n      - port: \"%d\"\n"
           "        protocol: TCP\n")
    return "---\n".join(doc % (tag, i, i % 97, i % 89, 1000 + i % 5000) for i in range(rules))


def valid_body(rules, source):
    return json.dumps({"files": [{"source": source, "text": policy_text(rules, source)}]}).encode()


def refused_body(mb):
    """Valid JSON up to its last bytes, then cut: the agent decodes all of it."""
    return b'{"files": [{"source": "bb-refused.yaml", "text": "' + b"a" * (mb << 20) + b'"'


def post(sock_path, target, body, method="POST", timeout=600):
    """Status of one raw request (the body sent as it is)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(sock_path)
        sock.sendall(b"%s %s HTTP/1.0\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % (method.encode(), target.encode(), len(body)))
        try:
            sock.sendall(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before the whole body was read: its answer is there
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            return 0  # refused (503) with the body unread: the agent closed over it
    finally:
        sock.close()
    return int(answer.split(b" ", 2)[1]) if answer else 0


def memory(pid, pause=1.0):
    """After `pause` s (the agent gives memory back once it answered): VmRSS,
    VmHWM, and smaps_rollup's anonymous and file-backed resident KiB."""
    time.sleep(pause)
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                out[name] = int(value.split()[0])
    with open("/proc/%d/smaps_rollup" % pid) as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("Anonymous", "Rss"):
                out[name] = int(value.split()[0])
    out["File"] = out["Rss"] - out["Anonymous"]
    return out


def show(label, m, start):
    print("%-34s rss %7d KiB (x%.2f)  hwm %7d KiB  anon %7d KiB  file %6d KiB" % (
        label, m["VmRSS"], m["VmRSS"] / start["VmRSS"], m["VmHWM"], m["Anonymous"], m["File"]),
        flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", type=int, default=20000, help="rules of a valid import")
    parser.add_argument("--mb", type=int, default=60, help="MB of a refused body")
    parser.add_argument("--concurrent", type=int, default=8, help="refused bodies at once")
    parser.add_argument("--valid-concurrent", type=int, default=2,
                        help="valid imports at once, alongside them")
    parser.add_argument("--agent-env", action="append", default=[], metavar="NAME=VALUE",
                        help="in the agent's environment (e.g. PYTHONMALLOC=malloc), to compare")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds before the last sample")
    opts = parse_args(parser, {"rules": 50, "mb": 1, "concurrent": 2, "valid_concurrent": 1,
                               "settle": 0.1})
    print_machine()
    work = tempfile.mkdtemp(prefix="bb-bench-bodies-")
    agent = lab.Agent(os.path.join(work, "agent"), bpf_root="/sys/fs/bpf/%s" % lab.unique("bb-"),
                      env=dict(e.split("=", 1) for e in opts.agent_env))
    try:
        agent.start()
        pid = agent.proc.pid
        sock = agent.socket
        # warm-up: one small import and its delete, so the start counts what lives on
        assert post(sock, "/v1/policy", valid_body(20, "bb-warm.yaml")) == 200
        assert post(sock, "/v1/policy?source=bb-warm.yaml", b"", "DELETE") == 200
        start = memory(pid)
        show("start", start, start)

        body = valid_body(opts.rules, "bb-valid.yaml")
        print("valid body: %d rules, %.1f MB; refused body: %.1f MB" % (
            opts.rules, len(body) / 1e6, len(refused_body(opts.mb)) / 1e6), flush=True)
        t0 = time.monotonic()
        status = post(sock, "/v1/policy", body)
        took = time.monotonic() - t0
        if status != 200:
            raise RuntimeError("valid import: HTTP %d" % status)
        show("one valid import (%.1f s), rules in" % took, memory(pid), start)
        assert post(sock, "/v1/policy?source=bb-valid.yaml", b"", "DELETE") == 200
        show("  its rules deleted", memory(pid), start)

        status = post(sock, "/v1/policy", refused_body(opts.mb))
        show("one refused body (HTTP %d)" % status, memory(pid), start)

        statuses = []
        bodies = [("/v1/policy", refused_body(opts.mb))] * opts.concurrent + [
            ("/v1/policy", valid_body(opts.rules, "bb-c%d.yaml" % i))
            for i in range(opts.valid_concurrent)]

        def send(target, data):
            statuses.append(post(sock, target, data))
        threads = [threading.Thread(target=send, args=b) for b in bodies]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        del bodies
        for i in range(opts.valid_concurrent):
            post(sock, "/v1/policy?source=bb-c%d.yaml" % i, b"", "DELETE")
        counts = {s: statuses.count(s) for s in sorted(set(statuses))}
        after = memory(pid)
        show("%d at once (%s), rules deleted" % (
            len(statuses), ", ".join("%d x %d" % (n, s) for s, n in counts.items())), after, start)
        time.sleep(opts.settle)
        settled = memory(pid, 0)
        show("%.0f s later" % opts.settle, settled, start)
    finally:
        remove_lab(agent, [], [], work)

    ratio = settled["VmRSS"] / start["VmRSS"]
    print("after / start: rss x%.2f, peak x%.2f" % (ratio, settled["VmHWM"] / start["VmRSS"]))
    print(target_line("RSS back within %.1fx of the start" % TARGET_RATIO, ratio <= TARGET_RATIO,
                      "x%.2f, %d -> %d KiB" % (ratio, start["VmRSS"], settled["VmRSS"])))


if __name__ == "__main__":
    main()
