"""Socket load-balancing: compile `bpf/sock.c`, attach it to a cgroup v2.

Does: load the eight sock_addr programs (connect, sendmsg, recvmsg,
getpeername; IPv4 and IPv6) against the maps a `Datapath` pinned under the
same bpf root, attach them to the cgroup (the v2 root on a node, so every
process and pod below it is covered) with BPF_F_ALLOW_MULTI, so that other
users' programs on the hook keep running, and pin them under
`progs/sock_*`. A newer agent attaches its programs first and only then
detaches the pinned ones (no moment without translation); stopping the
agent leaves them attached (established behaviour survives restarts), and
`uninstall()` detaches and unpins them.
Does not: touch the service maps (`maps.lb` does).
"""

import os
import threading

from bcc import BPF, BPFAttachType

from datapath import bpfsrc, bpfsys, pins
from datapath.errors import DatapathError
from datapath.events import EventSink

SOURCE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bpf", "sock.c")
DEFAULT_CGROUP = "/sys/fs/cgroup/unified"
BPF_F_ALLOW_MULTI = 2

PROGRAMS = {
    "sock_connect4": BPFAttachType.CGROUP_INET4_CONNECT,
    "sock_connect6": BPFAttachType.CGROUP_INET6_CONNECT,
    "sock_sendmsg4": BPFAttachType.CGROUP_UDP4_SENDMSG,
    "sock_sendmsg6": BPFAttachType.CGROUP_UDP6_SENDMSG,
    "sock_recvmsg4": BPFAttachType.CGROUP_UDP4_RECVMSG,
    "sock_recvmsg6": BPFAttachType.CGROUP_UDP6_RECVMSG,
    "sock_getpeername4": BPFAttachType.CGROUP_INET4_GETPEERNAME,
    "sock_getpeername6": BPFAttachType.CGROUP_INET6_GETPEERNAME,
}


def _open_cgroup(path: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise DatapathError(f"cannot open cgroup '{path}': {exc.strerror.lower()}") from None


def _detach(prog_fd: int, cgroup_fd: int, attach_type: int) -> None:
    try:
        bpfsys.prog_detach(cgroup_fd, prog_fd, attach_type)  # not attached there: fine
    except bpfsys.BpfError as exc:
        raise DatapathError(f"failed to detach a socket program: {exc.strerror.lower()}") from exc


class SocketLB:
    """The socket programs of one bpf root on one cgroup."""

    def __init__(self, datapath, cgroup: str = DEFAULT_CGROUP):
        self.dp = datapath
        self.cgroup = cgroup
        self._bpf = None
        self._stop = threading.Event()
        self._thread = None

    def pin(self, program: str) -> str:
        return self.dp.prog_pin(program)

    def load_and_attach(self) -> None:
        """Compile, attach (replacing our older programs), pin."""
        text = bpfsrc.expand(SOURCE_PATH)
        bpf = BPF(text=text.encode(), cflags=self.dp.cflags())
        cg = _open_cgroup(self.cgroup)
        try:
            for name, kind in PROGRAMS.items():
                fn = bpf.load_func(name.encode(), BPF.CGROUP_SOCK_ADDR, attach_type=kind)
                old = pins.pinned_fd(self.pin(name))
                try:
                    try:
                        bpfsys.prog_attach(cg, fn.fd, kind, BPF_F_ALLOW_MULTI)
                    except bpfsys.BpfError as exc:
                        raise DatapathError(f"failed to attach {name} to cgroup '{self.cgroup}': "
                                            f"{exc.strerror.lower()}") from exc
                    try:
                        pins.pin_replacing(fn.fd, self.pin(name))
                    except BaseException:
                        _detach(fn.fd, cg, kind)
                        raise
                    if old is not None:
                        _detach(old, cg, kind)
                finally:
                    if old is not None:
                        os.close(old)
        except BaseException:
            bpf.cleanup()
            raise
        finally:
            os.close(cg)
        self._bpf = bpf

    def start_events(self, callback, log) -> None:
        """Deliver the programs' translation events (raised only while
        lb_config asks) to `callback(event)` from a thread of our own."""
        sink = EventSink(callback)
        sink.open(self._bpf)

        def poll():
            while not self._stop.is_set():
                try:
                    sink.poll(self._bpf, 200)
                except Exception:
                    log.exception("reading socket load-balancing events failed")
                    self._stop.wait(1.0)

        self._thread = threading.Thread(target=poll, name="sock-events", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Drop our fds; the programs stay attached and pinned."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None


def uninstall(bpf_root: str, cgroup: str = DEFAULT_CGROUP) -> int:
    """Detach and unpin the socket programs pinned under `bpf_root`; returns how many."""
    done = 0
    cg = _open_cgroup(cgroup)
    try:
        for name, kind in PROGRAMS.items():
            path = f"{bpf_root.rstrip('/')}/progs/{name}"
            fd = pins.pinned_fd(path)
            if fd is None:
                continue
            try:
                _detach(fd, cg, kind)
                done += 1
            finally:
                os.close(fd)
            os.unlink(path)
    finally:
        os.close(cg)
    return done
