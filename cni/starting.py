"""The agent's "starting" marker: how the plugin tells an agent that is
starting from one that is down.

The agent binds its socket first (so that a second agent cannot take it)
and listens only when its datapath and endpoints are restored, ~1.5 s or
more later; in between, connecting is refused exactly as when no agent
runs. So the agent holds an flock on `<socket>.starting` for that window
(`hold` after binding, `release` once listening), and a plugin whose
connection was refused waits only while someone holds that lock
(`agent_starting`). A lock, not a pid in the file: the kernel drops it when
the agent dies however it dies, and it means the same in every pid
namespace. The file holds the agent's pid for people only.

Hot path: imports only `os`; `fcntl` is imported once a connection was
refused.
"""

import os

SUFFIX = ".starting"


def marker_path(socket_path):
    return socket_path + SUFFIX


def agent_starting(socket_path):
    """True while an agent that has bound `socket_path` is still starting."""
    try:
        fd = os.open(marker_path(socket_path), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        import fcntl
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False  # left behind by an agent that died while starting


def hold(socket_path):
    """Agent side, right after binding: create the marker, locked; return its fd.

    Written under a temporary name and locked before it is moved into place,
    so that no plugin ever finds the marker unlocked while the agent starts.
    """
    import fcntl
    path = marker_path(socket_path)
    tmp = "%s.%d.tmp" % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, b"%d\n" % os.getpid())
        os.rename(tmp, path)
    except BaseException:
        os.close(fd)
        _unlink(tmp)
        raise
    return fd


def release(socket_path, fd):
    """Agent side, once listening (or when a start is abandoned)."""
    _unlink(marker_path(socket_path))
    os.close(fd)


def _unlink(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
