"""The plugin's log file: pod fields on every line, size-based rotation that is
safe with many plugin processes writing at once."""

import io
import json
import multiprocessing
import os
import re

import pytest

from cni.errors import CniError
from cni.log import PluginLog
from cni.netconf import parse_netconf
from cni.plugin import main

pytestmark = pytest.mark.unit

LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z info w(\d+) n(\d+) x+ pid=\d+ "
                  r"verb=ADD containerID=c(\d+)$")


def netconf(tmp_path, **extra):
    return json.dumps({
        "cniVersion": "1.0.0", "name": "n", "type": "cilium-cni",
        "chaining-mode": "generic-veth", "agent-socket": str(tmp_path / "none.sock"),
        "log-file": str(tmp_path / "plugin.log"),
        "prevResult": {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0"}],
                       "ips": [{"address": "10.0.0.2/24", "interface": 0}]}, **extra})


def test_every_line_names_the_pod(tmp_path):
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "abc123", "CNI_NETNS": "/var/run/netns/x",
           "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni",
           "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-1"}
    assert main(env, io.StringIO(netconf(tmp_path)), io.StringIO()) == 1  # no agent: code 11
    lines = (tmp_path / "plugin.log").read_text().splitlines()
    assert lines and all(ln.endswith(" verb=ADD containerID=abc123 ifname=eth0 "
                                      "podNamespace=shop podName=web-1") for ln in lines)
    assert " error code 11: cilium-cni agent is not reachable" in lines[-1]


def test_rotates_by_size_and_keeps_backups(tmp_path):
    path = str(tmp_path / "p.log")
    log = PluginLog(path, " verb=ADD containerID=c1", max_bytes=1000, backups=2)
    for i in range(100):
        log.info("w0 n%d %s" % (i, "x" * 40))
    log.info("w0 n100 x")
    names = sorted(os.listdir(tmp_path))
    assert names == ["p.log", "p.log.1", "p.log.2", "p.log.lock"]
    for name in ("p.log.1", "p.log.2"):
        assert 1000 < os.path.getsize(tmp_path / name) < 1000 + 120  # + one line
    assert os.path.getsize(path) <= 1000
    # newest lines in p.log, the ones before in p.log.1, then p.log.2
    numbers = [int(LINE.match(ln).group(2)) for name in ("p.log.2", "p.log.1", "p.log")
               for ln in (tmp_path / name).read_text().splitlines()]
    assert numbers[-1] == 100
    numbers.pop()
    assert numbers == list(range(numbers[0], 100))


def test_zero_max_size_never_rotates(tmp_path):
    log = PluginLog(str(tmp_path / "p.log"), "", max_bytes=0)
    for i in range(200):
        log.info("line %d" % i)
    assert os.listdir(tmp_path) == ["p.log"]


def _writer(path, worker, count):
    log = PluginLog(path, " verb=ADD containerID=c%d" % worker, max_bytes=20000, backups=100)
    for i in range(count):
        log.info("w%d n%d %s" % (worker, i, "x" * (20 + (i * 7) % 60)))


def test_concurrent_writers_lose_nothing_and_rotate_once_per_fill(tmp_path):
    """8 processes x 600 lines: every line exactly once and whole, and no
    double rotation (each rotated file got past the limit before it moved)."""
    path = str(tmp_path / "p.log")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(path, w, 600)) for w in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    seen = set()
    backups = [n for n in os.listdir(tmp_path) if re.fullmatch(r"p\.log\.\d+", n)]
    assert len(backups) >= 10  # 8*600 lines of ~100 bytes in 20 kB files
    for name in backups + ["p.log"]:
        text = (tmp_path / name).read_text()
        for ln in text.splitlines():
            m = LINE.match(ln)
            assert m, "torn or mixed line in %s: %r" % (name, ln)
            assert m.group(1) == m.group(3)
            key = (int(m.group(1)), int(m.group(2)))
            assert key not in seen
            seen.add(key)
        if name != "p.log":
            assert os.path.getsize(tmp_path / name) > 20000, "%s rotated twice" % name
    assert seen == {(w, i) for w in range(8) for i in range(600)}


@pytest.mark.parametrize("extra, words", [
    ({"log-max-size": -1}, ["log-max-size", "-1"]),
    ({"log-max-size": "10"}, ["log-max-size", "must be a number"]),
    ({"log-max-backups": 0}, ["log-max-backups", "1 to 100"]),
    ({"log-max-backups": 2.5}, ["log-max-backups", "whole number"]),
])
def test_bad_rotation_settings_are_refused(tmp_path, extra, words):
    with pytest.raises(CniError) as err:
        parse_netconf(netconf(tmp_path, **extra))
    assert err.value.code == 7 and all(w in err.value.msg for w in words)


def test_rotation_settings_parse(tmp_path):
    conf = parse_netconf(netconf(tmp_path, **{"log-max-size": 0.5, "log-max-backups": 7}))
    assert (conf.log_max_bytes, conf.log_max_backups) == (512 << 10, 7)
    conf = parse_netconf(netconf(tmp_path))
    assert (conf.log_max_bytes, conf.log_max_backups) == (10 << 20, 3)
