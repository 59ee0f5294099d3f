"""The few bpf(2) commands we issue ourselves, through ctypes.

Does: look up, update, delete and iterate map elements by raw bytes (so the
callers encode keys exactly as docs/policy.md fixes them, network-order
fields included), read a hash map in batches, run a program on a packet
with BPF_PROG_TEST_RUN, open a pinned object by path and detach a program
from a cgroup. Does not: create or pin maps and programs (bcc does, in the
loader) or decide what the bytes mean (`maps` does).

Why not bcc's table objects: they build ctypes structs from the C types,
with every integer in host order, and cost ~10 us per element in Python;
a raw syscall with prepared bytes costs ~2 us. bcc 0.26 has no wrapper for
BPF_PROG_TEST_RUN at all.
"""

import ctypes
import errno
import os
import platform

# __NR_bpf per architecture (asm/unistd.h).
_NR_BPF = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "ppc64le": 361, "s390x": 351}

BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_OBJ_GET = 7
BPF_PROG_DETACH = 9
BPF_PROG_TEST_RUN = 10
BPF_MAP_LOOKUP_BATCH = 24

BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class BpfError(OSError):
    """A bpf(2) command failed; errno is the kernel's."""


class _ElemAttr(ctypes.Structure):
    _fields_ = [
        ("map_fd", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("key", ctypes.c_uint64),
        ("value", ctypes.c_uint64),  # or next_key
        ("flags", ctypes.c_uint64),
    ]


class _BatchAttr(ctypes.Structure):
    _fields_ = [
        ("in_batch", ctypes.c_uint64),
        ("out_batch", ctypes.c_uint64),
        ("keys", ctypes.c_uint64),
        ("values", ctypes.c_uint64),
        ("count", ctypes.c_uint32),
        ("map_fd", ctypes.c_uint32),
        ("elem_flags", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    ]


class _ObjAttr(ctypes.Structure):
    _fields_ = [
        ("pathname", ctypes.c_uint64),
        ("bpf_fd", ctypes.c_uint32),
        ("file_flags", ctypes.c_uint32),
    ]


class _AttachAttr(ctypes.Structure):
    _fields_ = [
        ("target_fd", ctypes.c_uint32),
        ("attach_bpf_fd", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("attach_flags", ctypes.c_uint32),
        ("replace_bpf_fd", ctypes.c_uint32),
    ]


class _TestRunAttr(ctypes.Structure):
    _fields_ = [
        ("prog_fd", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("data_in", ctypes.c_uint64),
        ("data_out", ctypes.c_uint64),
        ("repeat", ctypes.c_uint32),
        ("duration", ctypes.c_uint32),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_uint64),
        ("ctx_out", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
    ]


def _bpf(cmd: int, attr: ctypes.Structure) -> int:
    try:
        nr = _NR_BPF[platform.machine()]
    except KeyError:
        raise OSError(errno.ENOSYS, f"bpf(2) number unknown for {platform.machine()}") from None
    ret = _libc.syscall(nr, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    if ret < 0:
        err = ctypes.get_errno()
        raise BpfError(err, os.strerror(err))
    return ret


def _addr(buf) -> int:
    return ctypes.addressof(buf)


def obj_get(path: str) -> int:
    """A new fd for the program or map pinned at `path` (close it after)."""
    buf = ctypes.create_string_buffer(os.fsencode(path))
    attr = _ObjAttr(pathname=_addr(buf))
    return _bpf(BPF_OBJ_GET, attr)


def prog_detach(target_fd: int, prog_fd: int, attach_type: int) -> bool:
    """Detach the program from a cgroup's hook; False if it was not attached there."""
    attr = _AttachAttr(target_fd=target_fd, attach_bpf_fd=prog_fd, attach_type=attach_type)
    try:
        _bpf(BPF_PROG_DETACH, attr)
    except BpfError as exc:
        if exc.errno in (errno.ENOENT, errno.EINVAL):
            return False
        raise
    return True


def lookup(fd: int, key: bytes, value_size: int) -> bytes | None:
    """The value stored under `key`, or None."""
    kbuf = ctypes.create_string_buffer(key, len(key))
    vbuf = ctypes.create_string_buffer(value_size)
    attr = _ElemAttr(map_fd=fd, key=_addr(kbuf), value=_addr(vbuf))
    try:
        _bpf(BPF_MAP_LOOKUP_ELEM, attr)
    except BpfError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise
    return vbuf.raw


def update(fd: int, key: bytes, value: bytes, flags: int = BPF_ANY) -> bool:
    """Store `value`; with BPF_NOEXIST returns False if the key is taken."""
    kbuf = ctypes.create_string_buffer(key, len(key))
    vbuf = ctypes.create_string_buffer(value, len(value))
    attr = _ElemAttr(map_fd=fd, key=_addr(kbuf), value=_addr(vbuf), flags=flags)
    try:
        _bpf(BPF_MAP_UPDATE_ELEM, attr)
    except BpfError as exc:
        if exc.errno == errno.EEXIST and flags == BPF_NOEXIST:
            return False
        raise
    return True


def delete(fd: int, key: bytes) -> bool:
    """Remove `key`; False if it was not there."""
    kbuf = ctypes.create_string_buffer(key, len(key))
    attr = _ElemAttr(map_fd=fd, key=_addr(kbuf))
    try:
        _bpf(BPF_MAP_DELETE_ELEM, attr)
    except BpfError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
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
    attr = _ElemAttr(map_fd=fd, key=0, value=_addr(nxt))
    while True:
        try:
            _bpf(BPF_MAP_GET_NEXT_KEY, attr)
        except BpfError as exc:
            if exc.errno == errno.ENOENT:
                return out
            raise
        key = nxt.raw
        if key not in seen:
            seen.add(key)
            out.append(key)
        ctypes.memmove(cur, nxt, key_size)
        attr.key = _addr(cur)


def items_batch(fd: int, key_size: int, value_size: int, chunk: int = 4096) -> list[tuple[bytes, bytes]]:
    """Every (key, value) of a hash map, read with BPF_MAP_LOOKUP_BATCH.

    About 50x faster than GET_NEXT_KEY + LOOKUP per element for a full ct
    table. Not for LPM tries (the kernel has no batch ops for them).
    """
    out: list[tuple[bytes, bytes]] = []
    token_in = ctypes.create_string_buffer(8)
    token_out = ctypes.create_string_buffer(8)
    first = True
    while True:
        kbuf = ctypes.create_string_buffer(key_size * chunk)
        vbuf = ctypes.create_string_buffer(value_size * chunk)
        attr = _BatchAttr(
            in_batch=0 if first else _addr(token_in),
            out_batch=_addr(token_out),
            keys=_addr(kbuf),
            values=_addr(vbuf),
            count=chunk,
            map_fd=fd,
        )
        done = False
        try:
            _bpf(BPF_MAP_LOOKUP_BATCH, attr)
        except BpfError as exc:
            if exc.errno == errno.ENOSPC and attr.count == 0:
                chunk *= 2  # one bucket holds more than `chunk` entries
                continue
            if exc.errno != errno.ENOENT:
                raise
            done = True  # ENOENT: the last batch (count may still be > 0)
        kraw, vraw = kbuf.raw, vbuf.raw
        for i in range(attr.count):
            out.append((kraw[i * key_size : (i + 1) * key_size], vraw[i * value_size : (i + 1) * value_size]))
        if done:
            return out
        ctypes.memmove(token_in, token_out, 8)
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
    attr = _TestRunAttr(
        prog_fd=prog_fd,
        data_size_in=len(data),
        data_size_out=len(dout),
        data_in=_addr(din),
        data_out=_addr(dout),
        repeat=repeat,
        ctx_size_in=SKB_CTX_SIZE,
        ctx_in=_addr(ctx),
    )
    _bpf(BPF_PROG_TEST_RUN, attr)
    return attr.retval, attr.duration, dout.raw[: attr.data_size_out]
