"""The bpf(2) commands we issue ourselves, through libbcc's exported calls.

Does: look up, update, delete and iterate map elements by raw bytes (so the
map families encode keys exactly as docs/policy.md fixes them, network-order
fields included), read a hash map in batches, open and pin objects by
path, attach a program to a cgroup and detach it, list the programs on a
cgroup's hook, walk the kernel's programs by id and read a program's name,
type and tag, run a program on a packet (BPF_PROG_TEST_RUN), and read an
object's /proc fdinfo. Does not: create
maps or load programs (bcc does, in the loader) or decide what the bytes
mean (`maps.*` do).

Why not bcc's table objects: they build ctypes structs from the C types,
with every integer in host order, and cost ~10 us per element in Python; a
raw call with prepared bytes costs ~2 us. The calls are libbcc's own
exports (`bpf_lookup_elem`, ...) or, where bcc has no wrapper
(`bpf_obj_get`, `bpf_obj_pin`, `bpf_prog_attach`,
`bpf_prog_detach2`, `bpf_prog_query`, `bpf_prog_get_next_id`,
`bpf_prog_get_fd_by_id`, `bpf_obj_get_info_by_fd`,
`bpf_prog_test_run_opts`), the libbpf functions libbcc is linked with,
found through the same library handle. Each gets argument types of its
own here (bcc's, where it sets any, stay untouched). libbpf returns
-errno; every failure becomes a `BpfError` naming the command.
"""

import ctypes
import os
import re
from typing import NamedTuple

from bcc import libbcc

BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2

_ENOENT, _EEXIST, _EINVAL, _ENOSPC = 2, 17, 22, 28


class BpfError(OSError):
    """A bpf(2) command failed; errno is the kernel's, `what` the command."""

    def __init__(self, err: int, what: str):
        super().__init__(err, os.strerror(err))
        self.what = what

    def __str__(self) -> str:
        return f"{self.what}: {self.strerror.lower()}"


def _fn(name: str, restype, *argtypes):
    fn = libbcc.lib[name]  # a new function object: bcc's own keeps its types
    fn.restype = restype
    fn.argtypes = argtypes
    return fn


_u32p = ctypes.POINTER(ctypes.c_uint32)
_lookup = _fn("bpf_lookup_elem", ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_update = _fn("bpf_update_elem", ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p,
              ctypes.c_ulonglong)
_delete = _fn("bpf_delete_elem", ctypes.c_int, ctypes.c_int, ctypes.c_char_p)
_next_key = _fn("bpf_get_next_key", ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
_lookup_batch = _fn("bpf_lookup_batch", ctypes.c_int, ctypes.c_int, _u32p, _u32p, ctypes.c_void_p,
                    ctypes.c_void_p, _u32p)
_obj_get = _fn("bpf_obj_get", ctypes.c_int, ctypes.c_char_p)
_obj_pin = _fn("bpf_obj_pin", ctypes.c_int, ctypes.c_int, ctypes.c_char_p)
_prog_attach = _fn("bpf_prog_attach", ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_uint)
_prog_detach2 = _fn("bpf_prog_detach2", ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int)
_prog_query = _fn("bpf_prog_query", ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_uint32, _u32p,
                  _u32p, _u32p)
_prog_next_id = _fn("bpf_prog_get_next_id", ctypes.c_int, ctypes.c_uint32, _u32p)
_prog_fd_by_id = _fn("bpf_prog_get_fd_by_id", ctypes.c_int, ctypes.c_uint32)
_obj_info = _fn("bpf_obj_get_info_by_fd", ctypes.c_int, ctypes.c_int, ctypes.c_void_p, _u32p)


class _ProgInfo(ctypes.Structure):
    # The head of struct bpf_prog_info (linux/bpf.h) up to `name`: the
    # kernel fills as much as `info_len` says and leaves the rest alone.
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32),
        ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64),
        ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64),
        ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64),
        ("name", ctypes.c_char * 16),
    ]


class ProgInfo(NamedTuple):
    id: int
    type: int  # enum bpf_prog_type: 3 sched_cls, 18 cgroup_sock_addr, ...
    tag: str  # hex, as bpftool prints it: a hash of the instructions
    name: str  # at most 15 characters: the kernel truncates longer names


class _TestRunOpts(ctypes.Structure):
    # libbpf's struct bpf_test_run_opts up to `cpu`; `sz` tells libbpf
    # where it ends, so newer libbpf versions read the rest as zero.
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
    ]


_test_run = _fn("bpf_prog_test_run_opts", ctypes.c_int, ctypes.c_int, ctypes.POINTER(_TestRunOpts))


def _check(ret: int, what: str) -> int:
    if ret < 0:
        raise BpfError(-ret, what)
    return ret


def obj_get(path: str) -> int:
    """A new fd for the program or map pinned at `path` (close it after)."""
    return _check(_obj_get(os.fsencode(path)), f"opening pinned object '{path}'")


def obj_pin(fd: int, path: str) -> None:
    """Pin the object at `path` (bpffs; EEXIST if the name is taken)."""
    _check(_obj_pin(fd, os.fsencode(path)), f"pinning at '{path}'")


def prog_attach(target_fd: int, prog_fd: int, attach_type: int, flags: int = 0) -> None:
    """Attach the program to a cgroup's hook (flags: BPF_F_ALLOW_MULTI, ...)."""
    _check(_prog_attach(prog_fd, target_fd, attach_type, flags),
           f"attaching program fd {prog_fd} (attach type {attach_type})")


def prog_detach(target_fd: int, prog_fd: int, attach_type: int) -> bool:
    """Detach the program from a cgroup's hook; False if it was not attached there."""
    ret = _prog_detach2(prog_fd, target_fd, attach_type)
    if ret in (-_ENOENT, -_EINVAL):
        return False
    _check(ret, f"detaching program fd {prog_fd} (attach type {attach_type})")
    return True


def prog_query(target_fd: int, attach_type: int) -> list[int]:
    """Ids of the programs attached to the cgroup's hook itself (not the
    ones it inherits), in the order they run."""
    count = 64
    while True:
        ids = (ctypes.c_uint32 * count)()
        n = ctypes.c_uint32(count)
        ret = _prog_query(target_fd, attach_type, 0, None, ids, ctypes.byref(n))
        if ret == -_ENOSPC:  # more than `count`: `n` says how many
            count = max(n.value, count * 2)
            continue
        _check(ret, f"querying the programs on fd {target_fd} (attach type {attach_type})")
        return list(ids[: n.value])


def prog_ids() -> list[int]:
    """Every program id the kernel holds now (BPF_PROG_GET_NEXT_ID)."""
    out: list[int] = []
    nxt = ctypes.c_uint32()
    while True:
        ret = _prog_next_id(out[-1] if out else 0, ctypes.byref(nxt))
        if ret == -_ENOENT:
            return out
        _check(ret, "listing program ids")
        out.append(nxt.value)


def prog_fd_by_id(prog_id: int) -> int | None:
    """A new fd for the program with this id (close it after), or None if it is gone."""
    ret = _prog_fd_by_id(prog_id)
    if ret == -_ENOENT:
        return None
    return _check(ret, f"opening program id {prog_id}")


def prog_info(fd: int) -> ProgInfo:
    """The program's id, type, tag and (truncated) name."""
    info = _ProgInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    _check(_obj_info(fd, ctypes.byref(info), ctypes.byref(size)), f"reading program fd {fd}")
    return ProgInfo(info.id, info.type, bytes(info.tag).hex(),
                    info.name.decode(errors="replace"))


def lookup(fd: int, key: bytes, value_size: int) -> bytes | None:
    """The value stored under `key`, or None. For a per-CPU map,
    `value_size` is the per-CPU size (rounded up to 8) times the possible CPUs."""
    vbuf = ctypes.create_string_buffer(value_size)
    ret = _lookup(fd, key, vbuf)
    if ret == -_ENOENT:
        return None
    _check(ret, f"map lookup (fd {fd})")
    return vbuf.raw


def update(fd: int, key: bytes, value: bytes, flags: int = BPF_ANY) -> bool:
    """Store `value`; with BPF_NOEXIST returns False if the key is taken."""
    ret = _update(fd, key, value, flags)
    if ret == -_EEXIST and flags == BPF_NOEXIST:
        return False
    _check(ret, f"map update (fd {fd})")
    return True


def delete(fd: int, key: bytes) -> bool:
    """Remove `key`; False if it was not there."""
    ret = _delete(fd, key)
    if ret == -_ENOENT:
        return False
    _check(ret, f"map delete (fd {fd})")
    return True


def keys(fd: int, key_size: int) -> list[bytes]:
    """Every key, read with GET_NEXT_KEY (any map type, LPM tries included).

    When the current key vanishes meanwhile the kernel restarts the walk
    from the first key: keys already returned are skipped, not repeated.
    """
    out: list[bytes] = []
    seen: set[bytes] = set()
    cur = ctypes.create_string_buffer(key_size)
    nxt = ctypes.create_string_buffer(key_size)
    ret = _next_key(fd, None, nxt)
    while ret == 0:
        key = nxt.raw
        if key not in seen:
            seen.add(key)
            out.append(key)
        ctypes.memmove(cur, nxt, key_size)
        ret = _next_key(fd, cur, nxt)
    if ret != -_ENOENT:
        _check(ret, f"map key walk (fd {fd})")
    return out


def items_batch(fd: int, key_size: int, value_size: int, chunk: int = 4096) -> list[tuple[bytes, bytes]]:
    """Every (key, value) of a hash map, read with BPF_MAP_LOOKUP_BATCH.

    About 50x faster than GET_NEXT_KEY + LOOKUP per element for a full ct
    table. Not for LPM tries (the kernel has no batch ops for them). The
    batch token of a hash map is a bucket number (u32).
    """
    out: list[tuple[bytes, bytes]] = []
    token_in = ctypes.c_uint32()
    token_out = ctypes.c_uint32()
    first = True
    while True:
        kbuf = ctypes.create_string_buffer(key_size * chunk)
        vbuf = ctypes.create_string_buffer(value_size * chunk)
        count = ctypes.c_uint32(chunk)
        ret = _lookup_batch(fd, None if first else ctypes.byref(token_in), ctypes.byref(token_out),
                            kbuf, vbuf, ctypes.byref(count))
        if ret == -_ENOSPC and count.value == 0:
            chunk *= 2  # one bucket holds more than `chunk` entries
            continue
        done = ret == -_ENOENT  # the last batch (count may still be > 0)
        if ret < 0 and not done:
            _check(ret, f"map batch lookup (fd {fd})")
        kraw, vraw = kbuf.raw, vbuf.raw
        for i in range(count.value):
            out.append((kraw[i * key_size : (i + 1) * key_size], vraw[i * value_size : (i + 1) * value_size]))
        if done:
            return out
        token_in.value = token_out.value
        first = False


# struct __sk_buff is 192 bytes on 6.x kernels; ifindex sits at offset 40.
SKB_CTX_SIZE = 192
SKB_CTX_IFINDEX = 40


def prog_test_run(prog_fd: int, data: bytes, ifindex: int = 0, repeat: int = 1) -> tuple[int, int, bytes]:
    """Run a SCHED_CLS program on `data` (a frame from its Ethernet header).

    Returns (the program's return value, mean run time in ns, the packet
    as the program left it). `ifindex` becomes the skb's device, which
    `skb->ifindex` reports: the kernel accepts it in the __sk_buff context
    for tc test runs and resolves it in the caller's netns, so it must name
    an existing device there (ENODEV otherwise); 0 and 1 both mean the
    loopback device (ifindex 1).
    """
    din = ctypes.create_string_buffer(data, len(data))
    dout = ctypes.create_string_buffer(len(data) + 256)
    ctx = ctypes.create_string_buffer(SKB_CTX_SIZE)
    ctypes.c_uint32.from_buffer(ctx, SKB_CTX_IFINDEX).value = ifindex
    opts = _TestRunOpts(
        sz=ctypes.sizeof(_TestRunOpts),
        data_in=ctypes.addressof(din),
        data_out=ctypes.addressof(dout),
        data_size_in=len(data),
        data_size_out=len(dout),
        ctx_in=ctypes.addressof(ctx),
        ctx_size_in=SKB_CTX_SIZE,
        repeat=repeat,
    )
    _check(_test_run(prog_fd, ctypes.byref(opts)), f"test run of program fd {prog_fd}")
    return opts.retval, opts.duration, dout.raw[: opts.data_size_out]


def fdinfo(fd: int) -> dict[str, str | int]:
    """/proc/self/fdinfo of a bpf object: prog_id, map_type, key_size, ...
    (numbers as ints, hex ones included; "flags" is octal but unused)."""
    out: dict[str, str | int] = {}
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            key, _, value = line.partition(":")
            value = value.strip()
            if re.fullmatch(r"0x[0-9a-f]+", value):
                out[key] = int(value, 16)
            elif re.fullmatch(r"-?\d+", value):
                out[key] = int(value, 10)
            else:
                out[key] = value
    return out
