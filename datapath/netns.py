"""Resolve a pod's interface and its host-side veth peer from the kernel.

Does: read the pod interface (index, mac, mtu, addresses) inside the pod's
netns, find its veth peer in the agent's own netns by the veth peer index,
and check that the peer really is the other end of that veth in that pod
netns. Does not: trust prevResult, change anything, or keep sockets or
threads between calls (see `rtnl` for why and for the figures).

Every call that looks inside a pod opens the netns path once, so the
namespace cannot be swapped between the checks.
"""

import errno
import ipaddress
import os
import threading
from dataclasses import dataclass

from pyroute2.netlink.rtnl import RTM_DELADDR, RTM_GETADDR, RTM_GETLINK, RTM_GETNSID, RTM_NEWADDR
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.marshal import MarshalRtnl
from pyroute2.netlink.rtnl.nsidmsg import nsidmsg

from datapath.rtnl import NetlinkError, Rtnl, notification_socket

NETNSA_NSID_NOT_ASSIGNED = -1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV6_IFADDR = 0x100

_LINK_LOCAL_V6 = ipaddress.ip_network("fe80::/10")
_LINK_LOCAL_V4 = ipaddress.ip_network("169.254.0.0/16")


class NetnsError(Exception):
    """Base of this module's errors."""


class NetnsNotFound(NetnsError):
    def __init__(self, path: str, reason: str = "no such file"):
        super().__init__(f"failed to open netns '{path}': {reason}")
        self.path = path


class InterfaceNotFound(NetnsError):
    def __init__(self, netns: str, ifname: str):
        super().__init__(f"interface '{ifname}' not found in netns '{netns}'")
        self.netns = netns
        self.ifname = ifname


class NotAVeth(NetnsError):
    def __init__(self, netns: str, ifname: str, reason: str):
        super().__init__(f"interface '{ifname}' in netns '{netns}' is not usable: {reason}")
        self.netns = netns
        self.ifname = ifname
        self.reason = reason


@dataclass(frozen=True)
class PodInterface:
    ifname: str
    ifindex: int
    mac: str
    addresses: list[str]  # "addr/prefix", IPv4 and IPv6, link-local skipped
    mtu: int
    host_ifindex: int
    host_ifname: str
    host_mac: str


def inspect_pod_interface(netns_path: str, ifname: str) -> PodInterface:
    """Describe `ifname` in `netns_path` and its host-side veth peer."""
    host_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            pod_fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise NetnsNotFound(netns_path, exc.strerror.lower()) from exc
        try:
            pod, addresses, host_nsid = _read_pod_side(netns_path, pod_fd, host_fd, ifname)
        finally:
            os.close(pod_fd)
    finally:
        os.close(host_fd)

    def not_a_veth(reason: str) -> NotAVeth:
        return NotAVeth(netns_path, ifname, reason)

    if _kind(pod) != "veth":
        raise not_a_veth(f"it is a '{_kind(pod) or 'device'}', not a veth")
    peer_index = pod.get_attr("IFLA_LINK")
    peer_nsid = pod.get_attr("IFLA_LINK_NETNSID")
    if not peer_index:
        raise not_a_veth("it has no veth peer")
    # Without IFLA_LINK_NETNSID the peer sits in the pod's own netns; an
    # nsid that differs from the agent's points at a third namespace, where
    # the same index names an unrelated device.
    if peer_nsid is None or host_nsid == NETNSA_NSID_NOT_ASSIGNED or peer_nsid != host_nsid:
        raise not_a_veth("its veth peer is not in the agent's netns")

    host = link_by_index(peer_index)
    if host is None or host["kind"] != "veth" or host["peer_ifindex"] != pod["index"]:
        raise not_a_veth(f"host link {peer_index} is not its veth peer")
    return PodInterface(
        ifname=pod.get_attr("IFLA_IFNAME"),
        ifindex=pod["index"],
        mac=pod.get_attr("IFLA_ADDRESS"),
        addresses=addresses,
        mtu=pod.get_attr("IFLA_MTU"),
        host_ifindex=host["ifindex"],
        host_ifname=host["ifname"],
        host_mac=host["mac"],
    )


def link_by_index(ifindex: int) -> dict | None:
    """The link `ifindex` in the agent's netns, or None if there is none.

    Returns {"ifname", "ifindex", "kind", "peer_ifindex", "mac"}; kind is ""
    and peer_ifindex None for devices without them.
    """
    msg = ifinfmsg()
    msg["index"] = ifindex
    try:
        with Rtnl() as rtnl:
            (link,) = rtnl.request(msg, RTM_GETLINK)
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            return None
        raise
    return {
        "ifname": link.get_attr("IFLA_IFNAME"),
        "ifindex": link["index"],
        "kind": _kind(link),
        "peer_ifindex": link.get_attr("IFLA_LINK"),
        "mac": link.get_attr("IFLA_ADDRESS"),
    }


def _read_pod_side(netns_path: str, pod_fd: int, host_fd: int, ifname: str):
    try:
        rtnl = Rtnl(pod_fd)
    except OSError as exc:
        # EINVAL: the path exists but is not a network namespace.
        raise NetnsNotFound(netns_path, "not a network namespace") from exc
    with rtnl:
        msg = ifinfmsg()
        msg["attrs"] = [("IFLA_IFNAME", ifname)]
        try:
            (link,) = rtnl.request(msg, RTM_GETLINK)
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                raise InterfaceNotFound(netns_path, ifname) from exc
            raise
        msg = ifaddrmsg()
        msg["index"] = link["index"]
        addrs = rtnl.dump(msg, RTM_GETADDR)
        msg = nsidmsg()
        msg["attrs"] = [("NETNSA_FD", host_fd)]
        (nsid,) = rtnl.request(msg, RTM_GETNSID)
    host_nsid = nsid.get_attr("NETNSA_NSID")
    if host_nsid is not None and host_nsid >= 2**31:
        host_nsid -= 2**32  # the kernel sends NETNSA_NSID_NOT_ASSIGNED as u32
    return link, _addresses(addrs, link["index"]), host_nsid


def _addresses(addrs: list, ifindex: int) -> list[str]:
    out = []
    for addr in addrs:
        if addr["index"] != ifindex:
            continue
        # IFA_LOCAL is the interface's own address on point-to-point links,
        # where IFA_ADDRESS is the peer's.
        value = addr.get_attr("IFA_LOCAL") or addr.get_attr("IFA_ADDRESS")
        if value is None:
            continue
        iface = ipaddress.ip_interface(f"{value}/{addr['prefixlen']}")
        if iface.ip in _LINK_LOCAL_V6 or iface.ip in _LINK_LOCAL_V4:
            continue
        out.append(str(iface))
    return out


def _kind(link) -> str:
    info = link.get_attr("IFLA_LINKINFO")
    return (info.get_attr("IFLA_INFO_KIND") if info else None) or ""


def host_prefixes() -> set[str]:
    """/32 and /128 of every non-link-local address in the agent's (host) netns.

    One raw rtnetlink dump (~0.2 ms); the agent calls it before every ADD,
    because a prior plugin may just have given the host a new address.
    """
    out = set()
    with Rtnl() as rtnl:
        for addr in rtnl.dump(ifaddrmsg(), RTM_GETADDR):
            value = addr.get_attr("IFA_LOCAL") or addr.get_attr("IFA_ADDRESS")
            if value is None:
                continue
            ip = ipaddress.ip_address(value.split("%")[0])
            if ip in _LINK_LOCAL_V6 or ip in _LINK_LOCAL_V4:
                continue
            out.add(f"{ip}/{ip.max_prefixlen}")
    return out


class HostPrefixes:
    """`host_prefixes()`, dumped again only after the kernel reported a change.

    The agent asks for the node's addresses before every ADD (a prior
    plugin may just have given the host one, e.g. a bridge gateway). The
    dump grows with the node's links (every host veth has an fe80::
    address; ~18 us of decoding each) while the answer almost never
    changes. This keeps a socket subscribed to IPv4 and IPv6 address
    notifications: the kernel queues one before the syscall that added or
    removed an address returns, so an address a prior plugin added before
    cilium-cni ran is always seen. Each call drains that socket first and
    dumps again if a notification concerned an address `host_prefixes`
    reports (not a link-local one: each new pod's host veth brings an
    fe80:: address), or notifications were lost (ENOBUFS), or the socket
    or a message failed; a change racing with the dump is caught by the
    next call. Not for use across network namespaces: the socket watches
    the one it was made in.
    """

    def __init__(self):
        self._sock = notification_socket(RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR)
        self._marshal = MarshalRtnl()
        self._lock = threading.Lock()
        self._cached: set[str] | None = None
        self.dumps = 0  # how many times the addresses were read (tests)

    def __call__(self) -> set[str]:
        with self._lock:
            if self._drain() or self._cached is None:
                self._cached = host_prefixes()
                self.dumps += 1
            return set(self._cached)

    def _drain(self) -> bool:
        changed = False
        while True:
            try:
                data = self._sock.recv(65536)
            except BlockingIOError:
                return changed
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    return True  # a broken socket: read the addresses every time
                changed = True
                continue
            try:
                changed = changed or any(_counts(msg) for msg in self._marshal.parse(data))
            except Exception:
                changed = True

    def close(self) -> None:
        self._sock.close()


def _counts(msg) -> bool:
    """Could this notification change what host_prefixes() reports?"""
    if msg["header"]["type"] not in (RTM_NEWADDR, RTM_DELADDR):
        return True
    value = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
    if value is None:
        return False  # host_prefixes() skips it too
    ip = ipaddress.ip_address(value.split("%")[0])
    return not (ip in _LINK_LOCAL_V6 or ip in _LINK_LOCAL_V4)
