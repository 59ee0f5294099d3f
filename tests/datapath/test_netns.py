"""Resolving a pod's interface and host veth from a real netns."""

import os
import threading

import pytest

from datapath import netns
from tests import lab

pytestmark = pytest.mark.kernel


def test_inspect_matches_iproute2(pod):
    got = netns.inspect_pod_interface(pod.path, "eth0")
    pod_link, host_link = pod.pod_link(), pod.host_link()
    assert got.ifname == "eth0"
    assert got.ifindex == pod_link["ifindex"]
    assert got.mac == pod_link["address"]
    assert got.mtu == pod_link["mtu"]
    assert got.host_ifindex == host_link["ifindex"]
    assert got.host_ifname == pod.host_ifname
    assert got.host_mac == host_link["address"]
    # fe80:: (added by the kernel on link up) is left out.
    assert sorted(got.addresses) == sorted(pod.pod_cidrs)


def test_link_local_ipv4_is_skipped(pod):
    pod.netns.run("ip", "addr", "add", "169.254.7.7/16", "dev", "eth0")
    assert sorted(netns.inspect_pod_interface(pod.path, "eth0").addresses) == sorted(pod.pod_cidrs)


def test_missing_netns_is_reported_and_not_created(require_root):
    path = "/var/run/netns/%s" % lab.unique("ccdp-missing-")
    with pytest.raises(netns.NetnsNotFound, match=f"failed to open netns '{path}': no such file"):
        netns.inspect_pod_interface(path, "eth0")
    assert not os.path.exists(path)


def test_a_file_that_is_not_a_netns(tmp_path, require_root):
    path = tmp_path / "not-a-netns"
    path.write_text("")
    with pytest.raises(netns.NetnsNotFound, match="not a network namespace"):
        netns.inspect_pod_interface(str(path), "eth0")


def test_wrong_interface_name(pod):
    with pytest.raises(netns.InterfaceNotFound) as err:
        netns.inspect_pod_interface(pod.path, "eth9")
    assert str(err.value) == f"interface 'eth9' not found in netns '{pod.path}'"


def test_not_a_veth(pod):
    # dummy is the obvious choice but not built into every kernel (not into
    # this lab's 6.18); a bridge is as much "not a veth".
    kind = "dummy"
    if pod.netns.run("ip", "link", "add", "notveth0", "type", "dummy", check=False).returncode != 0:
        kind = "bridge"
        pod.netns.run("ip", "link", "add", "notveth0", "type", "bridge")
    with pytest.raises(netns.NotAVeth, match=f"'notveth0' in netns '{pod.path}' .* it is a '{kind}', not a veth"):
        netns.inspect_pod_interface(pod.path, "notveth0")
    with pytest.raises(netns.NotAVeth, match="it is a 'device', not a veth"):
        netns.inspect_pod_interface(pod.path, "lo")


def test_veth_whose_peer_is_in_the_same_netns(pod):
    # Its peer index is valid in the pod, and may well name an unrelated
    # device on the host: it must not be taken for a host veth.
    pod.netns.run("ip", "link", "add", "inner0", "type", "veth", "peer", "name", "inner1")
    with pytest.raises(netns.NotAVeth, match="peer is not in the agent's netns"):
        netns.inspect_pod_interface(pod.path, "inner0")


def test_link_by_index(pod):
    host_link = pod.host_link()
    got = netns.link_by_index(host_link["ifindex"])
    assert got == {
        "ifname": pod.host_ifname,
        "ifindex": host_link["ifindex"],
        "kind": "veth",
        "peer_ifindex": pod.pod_link()["ifindex"],
        "mac": host_link["address"],
    }
    lab.sh("ip", "link", "del", pod.host_ifname)
    assert netns.link_by_index(host_link["ifindex"]) is None


def test_callers_namespace_and_fds_are_untouched(pod):
    def own_netns():
        return os.stat("/proc/thread-self/ns/net").st_ino

    before_ns, before_fds = own_netns(), len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        netns.inspect_pod_interface(pod.path, "eth0")
    assert own_netns() == before_ns
    assert len(os.listdir("/proc/self/fd")) == before_fds
    assert [t.name for t in threading.enumerate() if t.name == "rtnl-setns"] == []


def _in_netns(ns, fn):
    """fn() on a thread inside `ns` (a lab.Netns); returns its result."""
    from datapath.rtnl import _setns
    out = {}

    def run():
        fd = os.open(ns.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(fd)
            out["value"] = fn()
        except BaseException as exc:
            out["error"] = exc
        finally:
            os.close(fd)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def test_host_prefixes_are_read_again_only_after_a_change(require_root):
    # In a private netns, so that no other test's address changes count.
    ns = lab.Netns()
    try:
        ns.run("ip", "link", "add", "dummy0", "type", "dummy", check=False)
        if ns.run("ip", "link", "show", "dummy0", check=False).returncode != 0:
            ns.run("ip", "link", "add", "dummy0", "type", "bridge")
        # No fe80:: address: its DAD would notify later, on its own schedule.
        ns.run("ip", "link", "set", "dummy0", "addrgenmode", "none")
        ns.run("ip", "link", "set", "dummy0", "up")
        base = {"127.0.0.1/32", "::1/128"}
        watch = _in_netns(ns, netns.HostPrefixes)
        try:
            assert _in_netns(ns, watch) == _in_netns(ns, netns.host_prefixes) == base
            assert _in_netns(ns, watch) == base
            assert watch.dumps == 1  # nothing changed: no second dump
            ns.run("ip", "addr", "add", "10.77.0.1/24", "dev", "dummy0")
            ns.run("ip", "addr", "add", "fd00:77::1/64", "dev", "dummy0", "nodad")
            assert _in_netns(ns, watch) == base | {"10.77.0.1/32", "fd00:77::1/128"}
            ns.run("ip", "addr", "del", "10.77.0.1/24", "dev", "dummy0")
            assert _in_netns(ns, watch) == base | {"fd00:77::1/128"}
            dumps = watch.dumps
            assert _in_netns(ns, watch) == base | {"fd00:77::1/128"}
            assert watch.dumps == dumps
            # Link-local addresses are not reported, so they trigger no dump
            # (every new pod's host veth gets an fe80:: address).
            ns.run("ip", "addr", "add", "fe80::77/64", "dev", "dummy0", "nodad")
            ns.run("ip", "addr", "add", "169.254.77.1/16", "dev", "dummy0")
            assert _in_netns(ns, watch) == base | {"fd00:77::1/128"}
            assert watch.dumps == dumps
            watch.close()  # a failing socket: read every time rather than trust the cache
            assert _in_netns(ns, watch) == base | {"fd00:77::1/128"}
            assert watch.dumps == dumps + 1
        finally:
            watch.close()
    finally:
        ns.remove()
