"""EndpointManager in-process, without root: hand-written stand-ins for the
kernel's links, the datapath, enforcement and the store (the root tests in
tests/agent/test_agent.py runs the same paths against the kernel).

Covers id allocation, rollback of a failed create, a repeated ADD, the
replacement of provably stale endpoints and the refusal to take over another
container's live endpoint (and that its DEL leaves the owner alone).
"""

import logging

import pytest

from agent.endpoints import EndpointManager
from agent.errors import BadRequest, Conflict, DatapathFailure, InvalidInterface
from cni import errors as cni
from datapath import netns
from datapath.netns import PodInterface

pytestmark = pytest.mark.unit

HOOKS = ("from_container", "to_container")


class FakeLinks:
    """Pod interfaces by (netns, ifname), host links by ifindex, and which
    netns paths name the same live namespace."""

    NetnsError = netns.NetnsError

    def __init__(self):
        self.pods = {}   # (netns, ifname) -> PodInterface
        self.links = {}  # ifindex -> link dict
        self.namespaces = {}  # netns path -> namespace identity (missing: gone)

    def add_pod(self, ns, ifname, ifindex, host_ifindex, host_ifname, address):
        self.namespaces.setdefault(ns, ns)
        self.pods[(ns, ifname)] = PodInterface(
            ifname=ifname, ifindex=ifindex, mac="02:00:00:00:00:%02x" % ifindex,
            addresses=[address], mtu=1500, host_ifindex=host_ifindex, host_ifname=host_ifname,
            host_mac="02:00:00:00:01:%02x" % host_ifindex)
        self.links[host_ifindex] = {"ifname": host_ifname, "ifindex": host_ifindex,
                                    "kind": "veth", "peer_ifindex": ifindex, "mac": ""}

    def remove_pod(self, ns, ifname):
        pod = self.pods.pop((ns, ifname))
        del self.links[pod.host_ifindex]
        del self.namespaces[ns]

    def inspect_pod_interface(self, ns, ifname):
        if ns not in self.namespaces:
            raise netns.NetnsNotFound(ns)
        if (ns, ifname) not in self.pods:
            raise netns.InterfaceNotFound(ns, ifname)
        return self.pods[(ns, ifname)]

    def link_by_index(self, ifindex):
        link = self.links.get(ifindex)
        return dict(link) if link else None

    def same_netns(self, a, b):
        return a in self.namespaces and self.namespaces.get(a) == self.namespaces.get(b)


class FakeEndpointMap:
    def __init__(self):
        self.map = {}

    def entries(self):
        return dict(self.map)


class FakeDatapath:
    def __init__(self):
        self.programs = {}  # ifindex -> set of hooks attached
        self.endpoints = FakeEndpointMap()
        self.fail_attach = None  # an exception to raise from attach
        self.drop_hook = None    # a hook attach "forgets"

    def attach(self, ifindex):
        if self.fail_attach:
            raise self.fail_attach
        self.programs[ifindex] = set(HOOKS) - {self.drop_hook}

    def attached(self, ifindex):
        have = self.programs.get(ifindex, set())
        return {hook: hook in have for hook in HOOKS}

    def detach(self, ifindex):
        self.programs.pop(ifindex, None)

    def remove_endpoint(self, ifindex, ep_id):
        if self.endpoints.map.get(ifindex) == ep_id:
            del self.endpoints.map[ifindex]


class FakeEnforcement:
    def __init__(self, datapath):
        self._dp = datapath
        self.attached = {}  # ep id -> ifindex

    def labels_for(self, req):
        if req.get("netconfArgs") == "bad":
            raise BadRequest("invalid endpoint labels: bad")
        return []

    def refresh_host(self):
        pass

    def attach_endpoint(self, ep, labels):
        ep["identity"], ep["labels"] = 1000 + ep["id"], []
        self.attached[ep["id"]] = ep["host"]["ifindex"]
        self._dp.endpoints.map[ep["host"]["ifindex"]] = ep["id"]

    def detach_endpoint(self, ep):
        self.attached.pop(ep["id"], None)
        self._dp.remove_endpoint(ep["host"]["ifindex"], ep["id"])


class FakeStore:
    def __init__(self):
        self.rows = {}
        self.fail = None

    def put_endpoint(self, ep):
        if self.fail:
            raise self.fail
        self.rows[ep["key"]] = dict(ep)

    def delete_endpoint(self, key):
        self.rows.pop(key, None)

    def endpoints(self):
        return [dict(ep) for ep in self.rows.values()]


class Lab:
    def __init__(self):
        self.links = FakeLinks()
        self.dp = FakeDatapath()
        self.enf = FakeEnforcement(self.dp)
        self.store = FakeStore()
        self.manager = EndpointManager(self.store, self.dp, self.enf,
                                       logging.getLogger("test-endpoints"), links=self.links)

    def add(self, cid, ns, ifname="eth0"):
        req = {"containerID": cid, "ifname": ifname, "netns": ns, "network": "podnet",
               "chainingMode": "generic-veth"}
        return self.manager.create("%s:%s" % (cid, ifname), req)


@pytest.fixture
def lab():
    lab = Lab()
    lab.links.add_pod("/run/netns/a", "eth0", 2, 10, "vethA", "10.0.0.2/24")
    lab.links.add_pod("/run/netns/b", "eth0", 2, 11, "vethB", "10.0.0.3/24")
    return lab


def test_ids_are_the_lowest_free_ones_and_come_back_after_a_delete(lab):
    lab.links.add_pod("/run/netns/c", "eth0", 2, 12, "vethC", "10.0.0.4/24")
    assert [lab.add(c, "/run/netns/" + c)["id"] for c in "abc"] == [1, 2, 3]
    assert lab.manager.delete("b:eth0") is True
    lab.links.add_pod("/run/netns/d", "eth0", 2, 13, "vethD", "10.0.0.5/24")
    assert lab.add("d", "/run/netns/d")["id"] == 2
    assert sorted(lab.store.rows) == ["a:eth0", "c:eth0", "d:eth0"]


def test_a_repeated_add_returns_the_endpoint_and_reattaches_its_programs(lab):
    first = lab.add("a", "/run/netns/a")
    lab.dp.programs.pop(10)
    again = lab.add("a", "/run/netns/a")
    assert again["id"] == first["id"] and lab.manager.count() == 1
    assert lab.dp.attached(10) == {"from_container": True, "to_container": True}


@pytest.mark.parametrize("failure", ["attach", "verify", "store"])
def test_a_failed_create_is_undone_completely(lab, failure):
    if failure == "attach":
        lab.dp.fail_attach = OSError("no space left on device")
    elif failure == "verify":
        lab.dp.drop_hook = "to_container"
    else:
        lab.store.fail = OSError("disk I/O error")
    with pytest.raises((DatapathFailure, OSError)):
        lab.add("a", "/run/netns/a")
    assert lab.manager.list() == [] and lab.store.rows == {}
    assert lab.enf.attached == {} and lab.dp.endpoints.map == {}
    assert 10 not in lab.dp.programs
    # and the next try starts clean, with the same id
    lab.dp.fail_attach, lab.dp.drop_hook, lab.store.fail = None, None, None
    assert lab.add("a", "/run/netns/a")["id"] == 1


def test_bad_labels_or_a_missing_interface_change_nothing(lab):
    req = {"containerID": "a", "ifname": "eth0", "netns": "/run/netns/a", "network": "podnet",
           "chainingMode": "generic-veth", "netconfArgs": "bad"}
    with pytest.raises(BadRequest):
        lab.manager.create("a:eth0", req)
    with pytest.raises(InvalidInterface):
        lab.add("a", "/run/netns/a", ifname="eth1")
    assert lab.manager.list() == [] and lab.dp.programs == {}


def test_another_containers_add_on_a_live_endpoint_is_refused(lab):
    # Regression: the second ADD replaced A's endpoint ("replacing stale
    # endpoint"), and B's DEL then removed the programs from A's veth.
    a = lab.add("a", "/run/netns/a")
    with pytest.raises(Conflict) as refused:
        lab.add("b", "/run/netns/a")
    assert refused.value.status == 409 and refused.value.cni_code == cni.INTERFACE_IN_USE
    assert "belongs to endpoint %d of container 'a'" % a["id"] in refused.value.message
    assert [ep["key"] for ep in lab.manager.list()] == ["a:eth0"]
    assert lab.manager.delete("b:eth0") is False
    assert lab.manager.check("a:eth0") == []
    assert lab.dp.endpoints.map == {10: a["id"]} and lab.enf.attached == {a["id"]: 10}


def test_a_reused_ifindex_replaces_the_stale_endpoint(lab):
    lab.add("a", "/run/netns/a")
    # A's pod went away without a DEL; a new pod's veth got A's old ifindex.
    lab.links.remove_pod("/run/netns/a", "eth0")
    lab.links.add_pod("/run/netns/n", "eth0", 2, 10, "vethN", "10.0.0.9/24")
    n = lab.add("n", "/run/netns/n")
    assert [ep["key"] for ep in lab.manager.list()] == ["n:eth0"]
    assert lab.dp.endpoints.map == {10: n["id"]} and lab.enf.attached == {n["id"]: 10}
    assert lab.dp.attached(10) == {"from_container": True, "to_container": True}
    assert "a:eth0" not in lab.store.rows


def test_an_endpoint_whose_netns_is_gone_is_stale(lab):
    lab.add("a", "/run/netns/a")
    # the same veth pair, but A's netns path is gone: the namespace is now
    # mounted elsewhere only (A's runtime forgot it without a DEL)
    pod = lab.links.pods.pop(("/run/netns/a", "eth0"))
    del lab.links.namespaces["/run/netns/a"]
    lab.links.pods[("/run/netns/m", "eth0")] = pod
    lab.links.namespaces["/run/netns/m"] = "/run/netns/m"
    lab.add("m", "/run/netns/m")
    assert [ep["key"] for ep in lab.manager.list()] == ["m:eth0"]


def test_the_same_container_in_a_new_netns_replaces_its_own_endpoint(lab):
    lab.add("a", "/run/netns/a")
    lab.links.add_pod("/run/netns/a2", "eth0", 2, 20, "vethA2", "10.0.0.7/24")
    again = lab.add("a", "/run/netns/a2")
    assert [(ep["key"], ep["host"]["ifindex"]) for ep in lab.manager.list()] == [("a:eth0", 20)]
    assert lab.dp.endpoints.map == {20: again["id"]}
    assert 10 not in lab.dp.programs  # the old veth is still there: its programs went


def test_a_delete_removes_only_its_own_endpoint(lab):
    a, b = lab.add("a", "/run/netns/a"), lab.add("b", "/run/netns/b")
    assert lab.manager.delete("b:eth0") is True
    assert lab.dp.endpoints.map == {10: a["id"]} and 11 not in lab.dp.programs
    assert lab.dp.attached(10) == {"from_container": True, "to_container": True}
    assert lab.manager.delete("b:eth0") is False
    assert b["id"] not in lab.enf.attached


def test_restore_drops_endpoints_whose_veth_is_gone(lab):
    lab.add("a", "/run/netns/a")
    lab.add("b", "/run/netns/b")
    lab.links.remove_pod("/run/netns/b", "eth0")
    fresh = EndpointManager(lab.store, lab.dp, FakeEnforcement(lab.dp),
                            logging.getLogger("test-endpoints"), links=lab.links)
    assert fresh.restore() == (1, 1)
    assert [ep["key"] for ep in fresh.list()] == ["a:eth0"]
    assert sorted(lab.store.rows) == ["a:eth0"] and 11 not in lab.dp.endpoints.map
