"""A real agent, held to the usual 1,024 descriptors, under a flood of
connections that send half a request and wait: the plugin's ADD, CHECK and
`cilium-cni status` are still answered within seconds, and the agent's
threads and descriptors come back once the flood closes."""

import contextlib
import os
import resource
import socket
import time

import pytest

from tests import lab

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("require_root")]

FLOOD = 1100
HALF = b"PUT /v1/endpoints/x:eth0 HTTP/1.0\r\nContent-Length: 500\r\n\r\n{\"containerID\""


@contextlib.contextmanager
def soft_fd_limit(want):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(want, hard)), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def counts(pid):
    return len(os.listdir("/proc/%d/task" % pid)), len(os.listdir("/proc/%d/fd" % pid))


def cpu_seconds(pid):
    fields = open("/proc/%d/stat" % pid).read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def wait_until(predicate, timeout):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_a_flood_of_half_requests_leaves_the_plugin_served(tmp_path, make_network, pods):
    # Regression: 1,100 such connections made every status and ADD fail
    # (ADD after 60 s with code 11), at 100% CPU, until they closed.
    agent = lab.Agent(str(tmp_path / "agent"), prefix=("prlimit", "--nofile=1024:1024"))
    held = []
    try:
        agent.start()
        pid = agent.proc.pid  # prlimit execs the agent
        net = make_network(agent)
        p = pods()
        threads0, fds0 = counts(pid)
        with soft_fd_limit(FLOOD + 512):
            for _ in range(FLOOD):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                held.append(sock)
                with contextlib.suppress(OSError):  # the agent may close old ones at once
                    sock.connect(agent.socket)
                    sock.sendall(HALF)
            threads, _ = counts(pid)
            assert threads <= threads0 + 2, (threads0, threads)
            used = cpu_seconds(pid)
            time.sleep(1)
            assert cpu_seconds(pid) - used < 0.5  # waiting, not spinning
            started = time.monotonic()
            net.chain.add("ctr", p.path)
            net.chain.check("ctr", p.path)
            proc = lab.cli(agent, "status")
            assert "endpoints" in proc.stdout
            assert time.monotonic() - started < 10
            for sock in held:
                sock.close()
            held.clear()
        assert wait_until(lambda: counts(pid)[1] <= fds0 + 2, 15), (fds0, counts(pid))
        assert counts(pid)[0] <= threads0 + 2
        net.chain.delete("ctr", p.path)
        assert agent.endpoints() == []
    finally:
        for sock in held:
            sock.close()
        agent.cleanup()
