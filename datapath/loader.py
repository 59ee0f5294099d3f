"""Compile, pin and attach the endpoint programs; read and write their maps.

Does: compile `bpf/endpoint.c` once per `load()` with bcc, pin both
programs and both maps under a bpffs root (maps are re-opened when already
pinned, so entries and counters survive an agent restart), attach the
programs as tc clsact filters on a pod's host veth, and edit or read the
`endpoints` and `metrics` maps. Does not: decide endpoint ids, look into pod
namespaces (see `netns`), or remove the clsact qdisc (other users' filters
hang off it).

Our filters sit at a fixed slot on each hook: priority 1, handle 1, kind
bpf, named `cilium-cni/<program>`. Priority 1 runs before any other filter,
so no earlier filter can end classification before the packet is counted.
A filter is ours only if slot and name match; one that merely occupies the
slot is never replaced or deleted (attach fails instead). The programs
return TC_ACT_UNSPEC, so filters others add at later priorities on the same
hook still see the pod's packets.

Thread-safety: one lock guards the loaded object (its fds may be closed by a
concurrent `load()`/`close()`) and the map tables. Netlink goes through a
socket per call (see `rtnl` for why not one shared IPRoute).
"""

import errno
import os
import re
import threading
import time
from dataclasses import dataclass

from bcc import BPF, libbcc

from datapath import bpffs, tc
from datapath.rtnl import NetlinkError, Rtnl

DEFAULT_BPF_ROOT = "/sys/fs/bpf/cilium-cni"
SOURCE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bpf", "endpoint.c")

DIR_INGRESS = 1  # to the pod
DIR_EGRESS = 2  # from the pod
_DIRECTIONS = {"ingress": DIR_INGRESS, "egress": DIR_EGRESS}

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

# What a pinned map must look like to be re-used: map_type, key_size,
# value_size, max_entries, map_flags (BPF_F_NO_PREALLOC = 1).
_MAP_SHAPES = {
    "endpoints": (1, 4, 16, 65536, 0),
    "metrics": (5, 8, 16, 131072, 1),
}


class DatapathError(Exception):
    """A datapath operation failed; the message names the object."""


class LinkNotFound(DatapathError):
    def __init__(self, ifindex: int):
        super().__init__(f"link {ifindex} not found")
        self.ifindex = ifindex


@dataclass(frozen=True)
class _Loaded:
    bpf: BPF
    fds: dict  # program name -> fd
    prog_ids: dict  # program name -> kernel program id


class Datapath:
    def __init__(self, bpf_root: str = DEFAULT_BPF_ROOT, source_path: str = SOURCE_PATH):
        if not os.path.isabs(bpf_root) or re.search(r'["\\\s]', bpf_root):
            # The path ends up inside a C string literal via -D.
            raise ValueError(
                f"invalid bpf root '{bpf_root}': want an absolute path without quotes, backslashes or spaces")
        self.bpf_root = bpf_root.rstrip("/")
        self.source_path = source_path
        self.compile_seconds: float | None = None
        self._lock = threading.Lock()
        self._loaded: _Loaded | None = None

    # -- paths and source -------------------------------------------------

    def prog_pin(self, program: str) -> str:
        return f"{self.bpf_root}/progs/{program}"

    def map_pin(self, name: str) -> str:
        return f"{self.bpf_root}/maps/{name}"

    def _defines(self) -> dict[str, str]:
        return {
            "PIN_ENDPOINTS": f'"{self.map_pin("endpoints")}"',
            "PIN_METRICS": f'"{self.map_pin("metrics")}"',
        }

    def cflags(self) -> list[str]:
        return [f"-D{name}={value}" for name, value in self._defines().items()]

    def source(self, debug: bool = False) -> str:
        """The C text compiled by `load()` and the -D flags it gets.

        With debug=True the flags are written out as #define lines, so the
        result compiles on its own (e.g. `BPF(text=...)`) for bisecting a
        verifier or compiler complaint.
        """
        with open(self.source_path) as f:
            text = f.read()
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
        with open(self.source_path) as f:
            text = f.read()
        started = time.perf_counter()
        bpf = BPF(text=text.encode(), cflags=self.cflags())
        self.compile_seconds = time.perf_counter() - started
        try:
            for name, shape in _MAP_SHAPES.items():
                _check_map_shape(self.map_pin(name), bpf[name.encode()].map_fd, shape)
            fds, ids = {}, {}
            for hook in HOOKS:
                fn = bpf.load_func(hook.program.encode(), BPF.SCHED_CLS)
                fds[hook.program] = fn.fd
                ids[hook.program] = _fdinfo(fn.fd)["prog_id"]
                _pin_replacing(fn.fd, self.prog_pin(hook.program))
        except BaseException:
            bpf.cleanup()
            raise
        with self._lock:
            old, self._loaded = self._loaded, _Loaded(bpf, fds, ids)
        if old is not None:
            old.bpf.cleanup()

    def prog_ids(self) -> dict[str, int]:
        with self._lock:
            return dict(self._require_loaded().prog_ids)

    def attach(self, host_ifindex: int) -> None:
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
            for hook in HOOKS:
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

    def detach(self, host_ifindex: int) -> None:
        """Remove our filters from the device; a missing link is fine."""
        with Rtnl() as rtnl:
            for hook in HOOKS:
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

    # -- maps ---------------------------------------------------------------

    def set_endpoint(self, host_ifindex: int, ep_id: int, identity: int = 0) -> None:
        if not 0 < ep_id < 2**32:
            raise ValueError(f"invalid endpoint id {ep_id}: 0 is reserved for unknown devices")
        with self._lock:
            table = self._require_loaded().bpf[b"endpoints"]
            table[table.Key(host_ifindex)] = table.Leaf(ep_id, identity, 0, 0)

    def remove_endpoint(self, host_ifindex: int, ep_id: int) -> None:
        """Forget the endpoint's device entry and both its counters.

        The device entry is removed only while it still names `ep_id`: an
        ifindex re-used by a newer endpoint keeps its entry. A packet in
        flight during removal may re-create a counter; `metrics_entries()`
        lets reconciliation find such leftovers.
        """
        with self._lock:
            bpf = self._require_loaded().bpf
            endpoints, metrics = bpf[b"endpoints"], bpf[b"metrics"]
            key = endpoints.Key(host_ifindex)
            try:
                if endpoints[key].ep_id == ep_id:
                    del endpoints[key]
            except KeyError:
                pass
            for direction in _DIRECTIONS.values():
                try:
                    del metrics[metrics.Key(ep_id, direction)]
                except KeyError:
                    pass

    def endpoint_stats(self, ep_id: int) -> dict[str, dict[str, int]]:
        """{"ingress": {"packets", "bytes"}, "egress": {...}}, summed over CPUs."""
        with self._lock:
            metrics = self._require_loaded().bpf[b"metrics"]
            stats = {}
            for name, direction in _DIRECTIONS.items():
                try:
                    per_cpu = metrics.getvalue(metrics.Key(ep_id, direction))
                except KeyError:
                    per_cpu = []
                stats[name] = {
                    "packets": sum(v.packets for v in per_cpu),
                    "bytes": sum(v.bytes for v in per_cpu),
                }
            return stats

    def endpoint_entries(self) -> dict[int, int]:
        """Host ifindex -> endpoint id, as the datapath sees it."""
        with self._lock:
            table = self._require_loaded().bpf[b"endpoints"]
            return {key.value: leaf.ep_id for key, leaf in table.items()}

    def metrics_entries(self) -> list[tuple[int, int]]:
        """(endpoint id, direction) of every counter."""
        with self._lock:
            table = self._require_loaded().bpf[b"metrics"]
            return [(key.ep_id, key.dir) for key in table.keys()]

    def close(self) -> None:
        """Drop our fds; filters, pins and maps stay (traffic keeps flowing)."""
        with self._lock:
            old, self._loaded = self._loaded, None
        if old is not None:
            old.bpf.cleanup()

    def __enter__(self) -> "Datapath":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _require_loaded(self) -> _Loaded:
        if self._loaded is None:
            raise DatapathError(f"datapath '{self.bpf_root}' is not loaded")
        return self._loaded


# -- helpers ------------------------------------------------------------------


def _fdinfo(fd: int) -> dict[str, str | int]:
    out: dict[str, str | int] = {}
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            key, _, value = line.partition(":")
            value = value.strip()
            if re.fullmatch(r"0x[0-9a-f]+", value):
                out[key] = int(value, 16)
            elif re.fullmatch(r"-?\d+", value):  # ("flags" is octal but unused)
                out[key] = int(value, 10)
            else:
                out[key] = value
    return out


def _check_map_shape(path: str, fd: int, want: tuple) -> None:
    # bcc re-opens a pinned map by path without comparing its definition;
    # a map pinned by an older endpoint.c would be misread.
    info = _fdinfo(fd)
    have = tuple(info.get(k) for k in ("map_type", "key_size", "value_size", "max_entries", "map_flags"))
    if have != want:
        raise DatapathError(
            f"pinned map '{path}' has (type, key, value, entries, flags) {have}, want {want}: "
            "remove the pin to recreate it (its entries and counters are lost)"
        )


def _pin_replacing(fd: int, path: str) -> None:
    # bpffs supports rename(2) over an existing pin, so readers of `path`
    # always find either the old or the new program. No "." in the name:
    # bpffs refuses it (EPERM).
    tmp = f"{path}-tmp-{os.getpid()}-{threading.get_ident()}"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    ret = libbcc.lib.bpf_obj_pin(fd, tmp.encode())
    if ret != 0:
        err = -ret if ret < 0 else errno.EIO
        raise DatapathError(f"failed to pin program at '{tmp}': {os.strerror(err).lower()}")
    os.rename(tmp, path)


def _reason(exc: NetlinkError) -> str:
    return str(exc.args[1] if len(exc.args) > 1 and exc.args[1] else os.strerror(exc.code)).lower()
