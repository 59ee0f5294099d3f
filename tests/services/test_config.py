"""Agent config keys of the services datapath: socket-lb, cgroup-root, nodeport-devices."""

import pytest

from agent.config import ConfigError, load

pytestmark = pytest.mark.unit


def write(tmp_path, text):
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    return str(path)


def test_defaults():
    c = load()
    assert (c.socket_lb, c.cgroup_root, c.nodeport_devices) == (True, "/sys/fs/cgroup/unified", [])


def test_values_and_command_line():
    c = load(None, {"socket-lb": False})
    assert c.socket_lb is False


def test_values_from_file(tmp_path):
    c = load(write(tmp_path, "socket-lb: false\ncgroup-root: /sys/fs/cgroup\nnodeport-devices: [eth0, eth1]\n"))
    assert (c.socket_lb, c.cgroup_root, c.nodeport_devices) == (False, "/sys/fs/cgroup", ["eth0", "eth1"])


@pytest.mark.parametrize("text, words", [
    ("socket-lb: 1\n", ["key 'socket-lb' must be a boolean", "1"]),
    ("socket-lb: 'yes please'\n", ["key 'socket-lb' must be a boolean"]),
    ("nodeport-devices: eth0\n", ["key 'nodeport-devices' must be a list of device names"]),
    ("nodeport-devices: [eth0, 3]\n", ["key 'nodeport-devices' must be a list of device names"]),
    ("nodeport-devices: ['']\n", ["key 'nodeport-devices'"]),
    ("cgroup-root: sys/fs/cgroup\n", ["key 'cgroup-root' must be an absolute path"]),
])
def test_bad_values_are_refused(tmp_path, text, words):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load(path)
    for w in words:
        assert w in str(err.value)
