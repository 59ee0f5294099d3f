"""Every documented benchmark command runs, in its smallest size (--smoke).

The figures of docs/benchmarks.md are only worth something while the
commands next to them still run (a hand-counted expectation once stopped
bench-throughput on a new kernel and nothing noticed). Each script runs here
as written in the docs, with `--smoke`; it must finish, print the machine
it ran on, its figures and, where it has targets, a line for each. No speed
is asserted: smoke sizes measure nothing.
"""

import os
import re
import subprocess

import pytest

from tests import lab

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("require_root")]

PYTHON = os.path.join(lab.REPO, ".venv", "bin", "python")
TARGET = re.compile(r"^\s*target: .+: (met|not met) \(.+\)$", re.M)

# (command, a figure line it must print, does it report targets)
CASES = {
    "benchmark": (["scripts/benchmark"], r"^cilium-cni ADD\s+\d+\.\d+\s+\d+\.\d+$", True),
    "bench_plugin_ab": ([PYTHON, "scripts/bench_plugin_ab.py", lab.PLUGIN_BIN, lab.PLUGIN_BIN],
                        r"^ratio B/A ADD median: \d+\.\d+$", True),
    "bench_agent": ([PYTHON, "scripts/bench_agent.py"], r"^create \(all\)\s+\d+\.\d+ ms$", False),
    "bench_policy": ([PYTHON, "scripts/bench_policy.py", "--datapath"],
                     r"into real maps\s+identity added: median \d+\.\d+ ms", True),
    "bench-throughput": (["scripts/bench-throughput"], r"^cilium-cni\s+2\s+\d+\.\d+\s+\d+\.\d+",
                         True),
    "bench-services": (["scripts/bench-services"],
                       r"^\| cilium-cni socket LB \| 1 \| \d+ \|", True),
    "bench_soak": ([PYTHON, "scripts/bench_soak.py"], r"^end / start over 4 cycles: rss \d", True),
    "bench_datapath": ([PYTHON, "scripts/bench_datapath.py"],
                       r"^policy\.update, 1000 new entries\s+median\s+\d", False),
    "bench_bodies": ([PYTHON, "scripts/bench_bodies.py"],
                     r"^after / start: rss x\d+\.\d+, peak x\d+\.\d+$", True),
    "bench_hooks": ([PYTHON, "scripts/bench_hooks.py"], r"^1\s+\d+\.\d+\s+\d+\.\d+$", True),
    "bench_kvstore": ([PYTHON, "scripts/bench_kvstore.py"],
                      r"^ratio etcd/sqlite ADD median, known identity: \d+\.\d+$", True),
    "bench_k8s_client": ([PYTHON, "scripts/bench_k8s_client.py"],
                         r"^lightkube\s+\d+\.\d+\s+\d+\.\d+", False),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_benchmark_runs_in_smoke_mode(name):
    command, figure, has_targets = CASES[name]
    proc = subprocess.run(command + ["--smoke"], cwd=lab.REPO, capture_output=True, text=True,
                          timeout=600)
    out = proc.stdout
    assert proc.returncode == 0, "%s --smoke failed (%d):\n%s\n%s" % (
        name, proc.returncode, out[-3000:], proc.stderr[-3000:])
    assert re.search(r"^machine: \d{4}-\d\d-\d\d \d\d:\d\d UTC, Linux \S+, .+ x \d+ cores", out,
                     re.M), out[:500]
    assert re.search(figure, out, re.M), "no figure line /%s/ in:\n%s" % (figure, out)
    if has_targets:
        assert TARGET.search(out), "no target line in:\n%s" % out
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


def _scripts(command):
    """The files under scripts/ a case runs: a wrapper and the script it runs."""
    names = {os.path.basename(part) for part in command if part.startswith("scripts/")}
    wrapped = {"benchmark": "bench_cni.py", "bench-throughput": "bench_throughput.py",
               "bench-services": "bench_services.py"}
    return names | {wrapped[n] for n in names if n in wrapped}


def test_every_benchmark_script_is_run_here():
    scripts = {n for n in os.listdir(os.path.join(lab.REPO, "scripts"))
               if n.startswith("bench") and n != "benchlib.py"}
    covered = set().union(*(_scripts(c[0]) for c in CASES.values()))
    assert scripts - covered == set(), "benchmarks without a smoke run: %s" % (scripts - covered)
