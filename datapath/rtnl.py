"""A short-lived rtnetlink channel built on pyroute2's message classes.

Does: open a NETLINK_ROUTE socket in the caller's netns or inside another
netns, send one request at a time, and return the decoded replies (pyroute2
`ifinfmsg`, `ifaddrmsg`, `tcmsg`, `nsidmsg`), raising pyroute2's
`NetlinkError` on a kernel error. Does not: keep sockets between calls,
listen to events, or offer pyroute2's IPRoute API.

Why not IPRoute (pyroute2 0.9.7, measured on this host): creating one costs
~1.1 ms (an asyncio loop per instance); `IPRoute(netns=...)` forks a child
process to create its socket (~7-10 ms per call, and a fork inside a
threaded agent); and one instance shared between threads leaks file
descriptors for every new thread that touches it (100 threads -> +100 fds),
which an HTTP server with a thread per request would hit. A socket per call
costs ~0.05 ms, has no thread affinity, and a netns is entered by a
throwaway thread calling setns(2) (~0.12 ms), so the agent's own threads
never change namespace.
"""

import ctypes
import os
import socket
import struct
import threading

from pyroute2.netlink import (
    NLM_F_ACK,
    NLM_F_DUMP,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
)
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

CLONE_NEWNET = 0x40000000
SOL_NETLINK = 270
NETLINK_EXT_ACK = 11
NETLINK_GET_STRICT_CHK = 12
NLM_F_DUMP_INTR = 0x10

# The kernel sizes dump messages to at most 32 KiB, so one recv of 64 KiB
# never truncates a message.
_RECV_SIZE = 65536
_DUMP_ATTEMPTS = 3

__all__ = ["NetlinkError", "Rtnl", "nested_attrs", "notification_socket"]


_libc = None


def _setns(fd: int) -> None:
    global _libc
    if hasattr(os, "setns"):  # Python >= 3.12
        os.setns(fd, CLONE_NEWNET)
        return
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _new_socket() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
    try:
        sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
        # Lets the kernel filter dumps (addresses of one link) instead of us.
        sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
        sock.bind((0, 0))
    except BaseException:
        sock.close()
        raise
    return sock


def notification_socket(groups: int) -> socket.socket:
    """A non-blocking rtnetlink socket that receives the multicast `groups`
    (RTMGRP_* bits) of the caller's netns. The kernel queues a notification
    on it before the syscall that made the change returns."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK,
                         socket.NETLINK_ROUTE)
    try:
        sock.bind((0, groups))
    except BaseException:
        sock.close()
        raise
    return sock


def _socket_in_netns(netns_fd: int) -> socket.socket:
    # setns(CLONE_NEWNET) changes only the calling thread, and a socket keeps
    # the netns it was created in; the thread ends right after, so no thread
    # of the agent is ever left in a pod's namespace.
    result: dict = {}

    def enter() -> None:
        try:
            _setns(netns_fd)
            result["sock"] = _new_socket()
        except BaseException as exc:  # handed to the caller's thread
            result["error"] = exc

    thread = threading.Thread(target=enter, name="rtnl-setns", daemon=True)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["sock"]


class Rtnl:
    """One rtnetlink socket; use from one thread at a time, then close.

    `netns_fd` is an open file descriptor of a network namespace (e.g. from
    `os.open('/var/run/netns/x', os.O_RDONLY)`); None means the caller's.
    """

    def __init__(self, netns_fd: int | None = None):
        self._sock = _new_socket() if netns_fd is None else _socket_in_netns(netns_fd)
        self._marshal = MarshalRtnl()
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> "Rtnl":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def request(self, msg, msg_type: int, flags: int = 0) -> list:
        """Send `msg` as `msg_type`; return the replies, waiting for the ack."""
        return self._exchange(msg, msg_type, NLM_F_REQUEST | NLM_F_ACK | flags)[0]

    def dump(self, msg, msg_type: int) -> list:
        """A dump request, retried when the kernel flags it inconsistent."""
        for _ in range(_DUMP_ATTEMPTS - 1):
            replies, interrupted = self._exchange(msg, msg_type, NLM_F_REQUEST | NLM_F_DUMP)
            if not interrupted:
                return replies
        replies, interrupted = self._exchange(msg, msg_type, NLM_F_REQUEST | NLM_F_DUMP)
        if interrupted:
            raise NetlinkError(4, "netlink dump kept changing while it was read")
        return replies

    def _exchange(self, msg, msg_type: int, flags: int) -> tuple[list, bool]:
        self._seq += 1
        seq = self._seq
        msg["header"]["type"] = msg_type
        msg["header"]["flags"] = flags
        msg["header"]["sequence_number"] = seq
        msg.encode()
        self._sock.send(msg.data)
        replies: list = []
        interrupted = False
        while True:
            data = self._sock.recv(_RECV_SIZE)
            for reply in self._marshal.parse(data):
                header = reply["header"]
                # Replies to an earlier request abandoned by an exception.
                if header["sequence_number"] != seq:
                    continue
                interrupted |= bool(header["flags"] & NLM_F_DUMP_INTR)
                if header["type"] == NLMSG_DONE:
                    return replies, interrupted
                if header["type"] == NLMSG_ERROR:
                    if header["error"] is not None:
                        raise header["error"]
                    return replies, interrupted
                replies.append(reply)


def nested_attrs(nla) -> dict[int, bytes]:
    """Raw payloads of the attributes nested in `nla`, by type number.

    pyroute2 0.9.7 decodes only part of some nests (cls_bpf's TCA_OPTIONS
    lacks TCA_BPF_TAG and TCA_BPF_ID and shows them as 'UNKNOWN' without a
    value); the encoded bytes are still in the message buffer.
    """
    data, start, length = nla.data, nla.offset, nla.length
    out: dict[int, bytes] = {}
    pos, end = start + 4, start + length
    while pos + 4 <= end:
        attr_len, attr_type = struct.unpack_from("=HH", data, pos)
        if attr_len < 4:
            break
        out[attr_type & 0x3FFF] = bytes(data[pos + 4 : pos + attr_len])
        pos += (attr_len + 3) & ~3
    return out
