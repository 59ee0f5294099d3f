"""Pins on bpffs: put an object where an older one is pinned, in one step;
open what a path pins.

Used by the loader (its programs) and `socklb` (the socket programs).
Separate from `bpffs` (filesystem checks, mounting, removal), which the
command line imports without bcc.
"""

import errno
import os
import threading

from datapath import bpfsys
from datapath.errors import DatapathError


def pin_replacing(fd: int, path: str) -> None:
    """Pin the object at `path`, replacing any object pinned there.

    bpffs supports rename(2) over an existing pin, so readers of `path`
    always find either the old or the new object, never nothing. No "."
    in the temporary name: bpffs refuses it (EPERM).
    """
    tmp = f"{path}-tmp-{os.getpid()}-{threading.get_ident()}"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    try:
        bpfsys.obj_pin(fd, tmp)
    except bpfsys.BpfError as exc:
        raise DatapathError(f"failed to pin at '{tmp}': {exc.strerror.lower()}") from exc
    os.rename(tmp, path)


def pinned_fd(path: str) -> int | None:
    """A new fd for the object pinned at `path` (close it after), or None
    if nothing is pinned there (or it went meanwhile)."""
    try:
        return bpfsys.obj_get(path)
    except bpfsys.BpfError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise
