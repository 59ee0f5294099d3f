"""Compile, pin and attach the endpoint programs; deliver their events.

Does: compile `bpf/endpoint.c` once per `load()` with bcc, pin its
programs and the maps of docs/policy.md and docs/services.md under a bpffs
root (maps are re-opened when already pinned, so entries, connections and
counters survive an agent restart), attach the programs as tc clsact
filters on a pod's host veth (or a node device, for NodePort), deliver
drop events from the `events` perf buffer, and run a loaded program on a
crafted packet (BPF_PROG_TEST_RUN, for tests). The maps are read and
written through one object per family (`datapath.maps`), reachable as
`endpoints`, `ipcache`, `policy`, `ct`, `metrics` and `lb`;
`remove_endpoint()` and `map_pressure()` span the families. Does not:
decide endpoint ids, identities or policy entries, look into pod
namespaces (see `netns`), or remove the clsact qdisc (other users' filters
hang off it).

Our filters sit at a fixed slot on each hook: priority 1, handle 1, kind
bpf, named `cilium-cni/<program>`. Priority 1 runs before any other filter,
so no earlier filter can end classification before the packet is counted.
A filter is ours only if slot and name match; one that merely occupies the
slot is never replaced or deleted (attach fails instead). Packets the
programs pass return TC_ACT_UNSPEC, so filters others add at later
priorities on the same hook still see them; policy drops return
TC_ACT_SHOT.

Thread-safety: one lock guards the loaded object (its fds may be closed by
a concurrent `load()`/`close()`); the map families hold it for each
operation (`maps.fds.MapFds`). Netlink goes through a socket per call (see
`rtnl` for why not one shared IPRoute). `poll_events()` holds a second
lock while it waits, so that `load()`/`close()` never free the perf buffer
under it; they wait for the poll's timeout at most.
"""

import errno
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import NamedTuple

from bcc import BPF

from datapath import bpffs, bpfsrc, bpfsys, pins, tc
from datapath.errors import DatapathError, LinkNotFound
from datapath.events import EventSink
from datapath.maps.ct import CtMap
from datapath.maps.endpoints import EndpointsMap
from datapath.maps.fds import MapFds
from datapath.maps.ipcache import IpcacheMap
from datapath.maps.lb import LbMaps
from datapath.maps.metrics import MetricsMap
from datapath.maps.policy import PolicyMap
from datapath.rtnl import NetlinkError, Rtnl

DEFAULT_BPF_ROOT = "/sys/fs/bpf/cilium-cni"
SOURCE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bpf", "endpoint.c")

FILTER_NAME_PREFIX = "cilium-cni/"


@dataclass(frozen=True)
class _Hook:
    key: str  # as reported by attached()
    program: str  # function in endpoint.c
    parent: int  # clsact hook

    @property
    def filter_name(self) -> str:
        return FILTER_NAME_PREFIX + self.program


# The host veth's ingress is what the pod sends; its egress what it receives.
HOOKS = (
    _Hook("from-container", "from_container", tc.HOOK_INGRESS),
    _Hook("to-container", "to_container", tc.HOOK_EGRESS),
)

# NodePort programs for the node's devices (`attach_netdev`), loaded and
# pinned with the endpoint programs.
NETDEV_HOOKS = (
    _Hook("from-netdev", "from_netdev", tc.HOOK_INGRESS),
    _Hook("to-netdev", "to_netdev", tc.HOOK_EGRESS),
)

# The map families, each with the shapes (map_type, key_size, value_size,
# max_entries, map_flags) its pinned maps must have to be re-used.
FAMILIES = (EndpointsMap, MetricsMap, IpcacheMap, PolicyMap, CtMap, LbMaps)
_MAP_SHAPES = {name: shape for family in FAMILIES for name, shape in family.SHAPES.items()}

# Names the C source may be compiled with through Datapath(defines=...).
_DEFINE_NAME = re.compile(r"[A-Z][A-Z0-9_]*")
_DEFINE_VALUE = re.compile(r"[0-9A-Za-z_]+")


class RunResult(NamedTuple):
    verdict: int  # the program's return value, signed (TC_ACT_UNSPEC is -1)
    duration_ns: int  # mean run time
    frame: bytes  # the packet as the program left it


@dataclass(frozen=True)
class _Loaded:
    bpf: BPF
    fds: dict  # program name -> fd
    prog_ids: dict  # program name -> kernel program id
    map_fds: dict  # map name -> fd (owned by `bpf`)


class Datapath:
    """The programs and maps under one bpffs root.

    `defines` overrides compile-time constants of endpoint.c, e.g.
    `{"CT_LIFETIME_NONTCP": "2"}` for tests (names in capitals, values
    plain tokens).
    """

    MAP_SHAPES = _MAP_SHAPES

    def __init__(self, bpf_root: str = DEFAULT_BPF_ROOT, source_path: str = SOURCE_PATH,
                 defines: dict[str, str | int] | None = None):
        if not os.path.isabs(bpf_root) or re.search(r'["\\\s]', bpf_root):
            # The path ends up inside a C string literal via -D.
            raise ValueError(
                f"invalid bpf root '{bpf_root}': want an absolute path without quotes, backslashes or spaces")
        self.bpf_root = bpf_root.rstrip("/")
        self.source_path = source_path
        self.extra_defines = {}
        for name, value in (defines or {}).items():
            if not _DEFINE_NAME.fullmatch(name) or not _DEFINE_VALUE.fullmatch(str(value)):
                raise ValueError(f"invalid define {name}={value}")
            self.extra_defines[name] = str(value)
        self.compile_seconds: float | None = None
        self._lock = threading.Lock()
        self._loaded: _Loaded | None = None
        self._poll_lock = threading.Lock()
        self._events = None  # EventSink while subscribed
        self._maps = MapFds(self.bpf_root, self._lock)
        self.endpoints = EndpointsMap(self._maps)
        self.metrics = MetricsMap(self._maps)
        self.ipcache = IpcacheMap(self._maps)
        self.policy = PolicyMap(self._maps)
        self.ct = CtMap(self._maps)
        self.lb = LbMaps(self._maps)
        self._families = (self.endpoints, self.metrics, self.ipcache, self.policy, self.ct, self.lb)

    # -- paths and source -------------------------------------------------

    def prog_pin(self, program: str) -> str:
        return f"{self.bpf_root}/progs/{program}"

    def map_pin(self, name: str) -> str:
        return f"{self.bpf_root}/maps/{name}"

    def _defines(self) -> dict[str, str]:
        paths = {f"PIN_{name.upper()}": f'"{self.map_pin(name)}"' for name in _MAP_SHAPES}
        return {**paths, **self.extra_defines}

    def cflags(self) -> list[str]:
        return [f"-D{name}={value}" for name, value in self._defines().items()]

    def source(self, debug: bool = False) -> str:
        """The C text compiled by `load()` and the -D flags it gets.

        With debug=True the flags are written out as #define lines, so the
        result compiles on its own (e.g. `BPF(text=...)`) for bisecting a
        verifier or compiler complaint.
        """
        text = bpfsrc.expand(self.source_path)
        if debug:
            defines = "".join(f"#define {name} {value}\n" for name, value in self._defines().items())
            return f"/* {self.source_path}, -D flags inlined */\n{defines}{text}"
        return f"/* {self.source_path}, bcc cflags: {' '.join(self.cflags())} */\n{text}"

    # -- programs ---------------------------------------------------------

    def load(self) -> None:
        """Compile once, load both programs, pin programs and maps.

        Filters already attached keep running the previous programs until
        `attach()` replaces them; `attached()` reports False meanwhile.
        """
        existing = self.bpf_root
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        # Checked before creating anything, so a wrong root leaves no trace.
        if not bpffs.is_bpffs(existing):
            raise DatapathError(f"bpf root '{self.bpf_root}' is not on a bpf filesystem")
        for sub in ("progs", "maps"):
            os.makedirs(f"{self.bpf_root}/{sub}", exist_ok=True)
        text = bpfsrc.expand(self.source_path)
        started = time.perf_counter()
        bpf = BPF(text=text.encode(), cflags=self.cflags())
        self.compile_seconds = time.perf_counter() - started
        try:
            map_fds = {}
            for name, shape in _MAP_SHAPES.items():
                map_fds[name] = bpf[name.encode()].map_fd
                _check_map_shape(self.map_pin(name), map_fds[name], shape)
            fds, ids = {}, {}
            for hook in HOOKS + NETDEV_HOOKS:
                fn = bpf.load_func(hook.program.encode(), BPF.SCHED_CLS)
                fds[hook.program] = fn.fd
                ids[hook.program] = bpfsys.fdinfo(fn.fd)["prog_id"]
                pins.pin_replacing(fn.fd, self.prog_pin(hook.program))
            loaded = _Loaded(bpf, fds, ids, map_fds)
            with self._lock:
                if self._events is not None:
                    self._events.open(loaded.bpf)
        except BaseException:
            bpf.cleanup()
            raise
        with self._lock:
            old, self._loaded = self._loaded, loaded
            self._maps.swap(map_fds)
        self._release(old)

    def _release(self, old: "_Loaded | None") -> None:
        if old is not None:
            with self._poll_lock:  # not while poll_events() reads it
                old.bpf.cleanup()

    def attach(self, host_ifindex: int, hooks=HOOKS) -> None:
        """Put our programs on the device's clsact hooks; idempotent.

        The hooks are done one after the other: after a failure the caller
        rolls back with `detach()`.
        """
        with self._lock, Rtnl() as rtnl:
            loaded = self._require_loaded()
            try:
                tc.add_clsact(rtnl, host_ifindex)
            except NetlinkError as exc:
                if exc.code == errno.ENODEV:
                    raise LinkNotFound(host_ifindex) from exc
                if exc.code != errno.EEXIST:
                    raise DatapathError(f"failed to add clsact qdisc on link {host_ifindex}: {_reason(exc)}") from exc
            for hook in hooks:
                self._attach_hook(rtnl, host_ifindex, hook, loaded.fds[hook.program])

    def _attach_hook(self, rtnl: Rtnl, ifindex: int, hook: _Hook, fd: int) -> None:
        what = f"{hook.program} on link {ifindex}"
        # Exclusive create first: the common case (a new pod) needs no dump.
        try:
            tc.put_bpf_filter(rtnl, ifindex, hook.parent, fd, hook.filter_name, replace=False)
            return
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise DatapathError(f"failed to attach {what}: {_reason(exc)}") from exc
        current = tc.find_slot(rtnl, ifindex, hook.parent)
        if current is not None and tc.bpf_filter_name(current) != hook.filter_name:
            raise DatapathError(
                f"failed to attach {what}: its tc slot (prio {tc.PRIO} handle {tc.HANDLE}) holds a foreign filter"
            )
        try:
            tc.put_bpf_filter(rtnl, ifindex, hook.parent, fd, hook.filter_name, replace=True)
        except NetlinkError as exc:
            raise DatapathError(f"failed to replace {what}: {_reason(exc)}") from exc

    def attach_netdev(self, ifindex: int) -> None:
        """Put the NodePort programs on a node device's clsact hooks; idempotent."""
        self.attach(ifindex, NETDEV_HOOKS)

    def detach(self, host_ifindex: int, hooks=HOOKS) -> None:
        """Remove our filters from the device; a missing link is fine."""
        with Rtnl() as rtnl:
            for hook in hooks:
                try:
                    current = tc.find_slot(rtnl, host_ifindex, hook.parent)
                    if current is not None and tc.bpf_filter_name(current) == hook.filter_name:
                        tc.delete_slot(rtnl, host_ifindex, hook.parent)
                except NetlinkError as exc:
                    if exc.code == errno.ENODEV:
                        return
                    if exc.code == errno.ENOENT:  # removed meanwhile
                        continue
                    raise DatapathError(
                        f"failed to detach {hook.program} from link {host_ifindex}: {_reason(exc)}") from exc

    def attached(self, host_ifindex: int) -> dict[str, bool]:
        """Per hook: does our slot run the program loaded by this object?"""
        with self._lock:
            ids = dict(self._loaded.prog_ids) if self._loaded else {}
        result = {hook.key: False for hook in HOOKS}
        if not ids:
            return result
        with Rtnl() as rtnl:
            for hook in HOOKS:
                try:
                    current = tc.find_slot(rtnl, host_ifindex, hook.parent)
                except NetlinkError as exc:
                    if exc.code == errno.ENODEV:
                        return {hook.key: False for hook in HOOKS}
                    raise
                result[hook.key] = (
                    current is not None
                    and tc.bpf_filter_name(current) == hook.filter_name
                    and tc.bpf_filter_prog_id(current) == ids[hook.program]
                )
        return result

    # -- across the map families ----------------------------------------------

    def remove_endpoint(self, host_ifindex: int, ep_id: int) -> None:
        """Forget the endpoint's device entry, counters, policy and connections.

        The device entry is removed only while it still names `ep_id`: an
        ifindex re-used by a newer endpoint keeps its entry. A packet in
        flight during removal may re-create a counter; `metrics.entries()`
        lets reconciliation find such leftovers. Each step is complete on
        its own (and takes the lock on its own).
        """
        self.endpoints.delete(host_ifindex, ep_id)
        self.metrics.clear(ep_id)
        self.policy.clear(ep_id)
        self.ct.flush(ep_id)

    def map_pressure(self) -> dict[str, tuple[int, int]]:
        """Map name -> (entries, max_entries) for every pinned map that can
        fill up (arrays, always full, are not listed)."""
        out: dict[str, tuple[int, int]] = {}
        for family in self._families:
            out.update(family.pressure())  # each under the lock on its own
        return out

    # -- drop events and test runs -------------------------------------------

    def open_events(self, callback) -> None:
        """Deliver every drop event to `callback(event)` from `poll_events()`.

        `event` is a dict: "time" (seconds since the epoch), "epID",
        "srcIdentity", "dstIdentity", "src", "dst" (address strings),
        "sport", "dport", "proto" ("TCP", "UDP", "ICMP", "ICMPv6", "SCTP" or
        the number), "direction" ("ingress"/"egress"), "reason"
        ("policy-denied", "policy-deny", "invalid-packet",
        "no-service-backend"), "ifindex", "length"; translation events are
        described in `events.event_decode`. A later `load()` re-opens the
        buffer on the new programs' `events` map; drops of filters still
        running older programs are not seen.
        """
        sink = EventSink(callback)
        with self._lock:
            loaded = self._require_loaded()
            self._events = sink
            sink.open(loaded.bpf)

    def poll_events(self, timeout_ms: int = 100) -> int:
        """Wait up to `timeout_ms` for drop events and deliver them; returns
        how many were delivered. An exception raised by the callback is
        re-raised here, after the batch."""
        with self._poll_lock:
            with self._lock:
                loaded, sink = self._loaded, self._events
            if loaded is None or sink is None:
                raise DatapathError("no event subscription: call open_events() first")
            return sink.poll(loaded.bpf, timeout_ms)

    def test_run(self, program: str, data: bytes, ifindex: int = 1, repeat: int = 1) -> "RunResult":
        """Run a loaded program on one frame with BPF_PROG_TEST_RUN
        (`repeat` times): its verdict (TC_ACT_UNSPEC -1, TC_ACT_SHOT 2,
        ...), the mean run time and the frame as the program left it. The
        map side effects are real (ct entries, counters, events). `ifindex`
        must name a device of the caller's netns (`bpfsys.prog_test_run`)."""
        with self._lock:
            fd = self._require_loaded().fds[program]
            try:
                retval, duration, frame = bpfsys.prog_test_run(fd, data, ifindex=ifindex, repeat=repeat)
            except bpfsys.BpfError as exc:
                raise DatapathError(f"test run of {program} on link {ifindex} failed: {exc.strerror.lower()}") from exc
        return RunResult(retval - 2**32 if retval >= 2**31 else retval, duration, frame)

    def close(self) -> None:
        """Drop our fds; filters, pins and maps stay (traffic keeps flowing)."""
        with self._lock:
            old, self._loaded = self._loaded, None
            self._maps.swap(None)
            self._events = None
        self._release(old)

    def __enter__(self) -> "Datapath":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _require_loaded(self) -> _Loaded:
        if self._loaded is None:
            raise DatapathError(f"datapath '{self.bpf_root}' is not loaded")
        return self._loaded


# -- helpers ------------------------------------------------------------------


def _check_map_shape(path: str, fd: int, want: tuple) -> None:
    # bcc re-opens a pinned map by path without comparing its definition;
    # a map pinned by an older endpoint.c would be misread.
    info = bpfsys.fdinfo(fd)
    have = tuple(info.get(k) for k in ("map_type", "key_size", "value_size", "max_entries", "map_flags"))
    if have != want:
        raise DatapathError(
            f"pinned map '{path}' has (type, key, value, entries, flags) {have}, want {want}: "
            "remove the pin to recreate it (its entries and counters are lost)"
        )


def _reason(exc: NetlinkError) -> str:
    return str(exc.args[1] if len(exc.args) > 1 and exc.args[1] else os.strerror(exc.code)).lower()
