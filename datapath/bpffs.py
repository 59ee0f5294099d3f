"""bpffs helpers: recognise, mount, and empty a bpf filesystem subtree.

Does: test whether a path lives on bpffs (statfs magic), mount bpffs on a
mountpoint that lacks it, and unpin every object under a root. Does not:
create or open pins (the loader does that through bcc) or unmount anything.
"""

import ctypes
import errno
import os

BPF_FS_MAGIC = 0xCAFE4A11

# struct statfs is 120 bytes on x86_64 and smaller elsewhere; f_type is its
# first member (a long) on every Linux ABI we care about.
_STATFS_BUFSIZE = 256


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _fs_type(path: str) -> int:
    buf = ctypes.create_string_buffer(_STATFS_BUFSIZE)
    if _libc().statfs(os.fsencode(path), buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return ctypes.c_ulong.from_buffer(buf).value & 0xFFFFFFFF


def is_bpffs(path: str) -> bool:
    """True if `path` exists and is on a bpf filesystem."""
    try:
        return _fs_type(path) == BPF_FS_MAGIC
    except FileNotFoundError:
        return False
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return False
        raise


def ensure_mounted(mountpoint: str = "/sys/fs/bpf") -> bool:
    """Mount bpffs on `mountpoint` unless it is already there.

    Returns True if this call mounted it.
    """
    if is_bpffs(mountpoint):
        return False
    os.makedirs(mountpoint, exist_ok=True)
    if _libc().mount(b"bpf", os.fsencode(mountpoint), b"bpf", 0, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"failed to mount bpffs on '{mountpoint}': {os.strerror(err)}", mountpoint)
    return True


def remove_tree(bpf_root: str) -> None:
    """Unpin every object under `bpf_root` and remove the directories.

    A missing root is fine. Refuses to touch a root that is not on bpffs,
    so a mistyped path can never delete ordinary files. Unpinning drops only
    the path: programs still attached to a device and maps they use live on
    until their last user goes away.
    """
    if not os.path.lexists(bpf_root):
        return
    if not is_bpffs(bpf_root):
        raise ValueError(f"refusing to remove '{bpf_root}': not on a bpf filesystem")
    for dirpath, dirnames, filenames in os.walk(bpf_root, topdown=False):
        for name in filenames:
            _ignore_missing(os.unlink, os.path.join(dirpath, name))
        for name in dirnames:
            path = os.path.join(dirpath, name)
            # os.walk lists symlinks to directories among dirnames.
            _ignore_missing(os.unlink if os.path.islink(path) else os.rmdir, path)
    _ignore_missing(os.rmdir, bpf_root)


def _ignore_missing(op, path: str) -> None:
    # Another process tearing down the same tree is not an error.
    try:
        op(path)
    except FileNotFoundError:
        pass
