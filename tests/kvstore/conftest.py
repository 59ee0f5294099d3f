"""A real etcd member on loopback for the kvstore tests (one per module).

Ports are picked free; data lives in a temporary dir; the process is ours,
stopped by its pid. `kill()` and `start()` let a test take etcd away and
bring it back with its data. Each test gets a key prefix of its own.
"""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid

import pytest

ETCD = shutil.which("etcd") or "/usr/bin/etcd"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EtcdMember:
    """`tls`: {"ca", "cert", "key"} files: clients must show a certificate
    that CA signed (https)."""

    def __init__(self, tls=None):
        self.dir = tempfile.mkdtemp(prefix="ccni-etcd-")
        self.client, self.peer = _free_port(), _free_port()
        self.tls = tls
        self.url = "%s://127.0.0.1:%d" % ("https" if tls else "http", self.client)
        self.proc = None

    def start(self, timeout=20):
        state = "existing" if os.path.isdir(os.path.join(self.dir, "data", "member")) else "new"
        peer = "http://127.0.0.1:%d" % self.peer
        self.proc = subprocess.Popen(
            [ETCD, "--name", "m0", "--data-dir", os.path.join(self.dir, "data"),
             "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", "m0=" + peer, "--initial-cluster-state", state,
             *(["--cert-file", self.tls["cert"], "--key-file", self.tls["key"],
                "--trusted-ca-file", self.tls["ca"], "--client-cert-auth"] if self.tls else [])],
            stdout=open(os.path.join(self.dir, "etcd.log"), "ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("etcd exited %d: %s" % (self.proc.returncode, self.log()))
            if self.ctl("endpoint", "health", check=False).returncode == 0:
                return self
            time.sleep(0.1)
        raise RuntimeError("etcd did not become healthy: %s" % self.log())

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def ctl(self, *args, check=True):
        tls = ["--cacert", self.tls["ca"], "--cert", self.tls["client_cert"], "--key",
               self.tls["client_key"]] if self.tls else []
        return subprocess.run(["etcdctl", "--endpoints", self.url, "--command-timeout=3s", *tls,
                               *args],
                              capture_output=True, text=True, check=check, timeout=20,
                              env=dict(os.environ, ETCDCTL_API="3"))

    def keys(self, prefix):
        out = self.ctl("get", "--prefix", "--keys-only", prefix).stdout
        return sorted(line for line in out.splitlines() if line)

    def log(self):
        try:
            with open(os.path.join(self.dir, "etcd.log")) as f:
                return f.read()[-3000:]
        except OSError:
            return ""

    def remove(self):
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def etcd_member():
    member = EtcdMember()
    try:
        yield member.start()
    finally:
        member.remove()


@pytest.fixture
def etcd(etcd_member):
    """The module's member, running (a test before may have killed it)."""
    if etcd_member.proc is None or etcd_member.proc.poll() is not None:
        etcd_member.start()
    return etcd_member


@pytest.fixture
def prefix(etcd):
    name = "t-%s" % uuid.uuid4().hex[:8]
    yield name
    if etcd.proc.poll() is None:
        etcd.ctl("del", "--prefix", name + "/", check=False)
