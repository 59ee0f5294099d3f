"""The plugin's log: one line per event appended to the netconf's `log-file`,
rotated by size (netconf `log-max-size` MiB, `log-max-backups` files).

Not the `logging` module: it costs ~5 ms to import on every pod operation,
and the plugin writes a handful of lines per call. The plugin's stdout is
reserved for the CNI result; a log that cannot be written is dropped
silently rather than failing a pod.

Lines look like the agent's text log: time, level, message, then
`verb= pid= containerID= ifname= podNamespace= podName=`.

Rotation with many short-lived plugins writing at once: each line is one
O_APPEND write(2) to whatever file the name points to when it is opened,
so no line is split or lost; a writer that still holds the old file just
appends to `FILE.1`. The writer whose line takes the file over the limit
rotates under an flock on `FILE.lock` and first re-checks the size *by
name*: everyone else who saw the same old file over the limit finds the
new, small file and does nothing, so one rotation happens, not N. The
common case costs one fstat(2); fcntl is imported only to rotate.
"""

import os
import time

DEFAULT_LOG_FILE = "/var/log/cilium-cni.log"
DEFAULT_MAX_BYTES = 10 << 20
DEFAULT_BACKUPS = 3


class PluginLog:
    __slots__ = ("path", "context", "max_bytes", "backups")

    def __init__(self, path=DEFAULT_LOG_FILE, context="", max_bytes=DEFAULT_MAX_BYTES,
                 backups=DEFAULT_BACKUPS):
        self.path = path
        self.context = context
        self.max_bytes = max_bytes  # 0: never rotate
        self.backups = backups

    def write(self, level, msg):
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
        line = "%s.%03dZ %s %s pid=%d%s\n" % (
            stamp, int(now * 1000) % 1000, level, msg.replace("\n", " | "), os.getpid(),
            self.context)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        except (OSError, ValueError):  # ValueError: a name no file can have (NUL, ...)
            return
        try:
            os.write(fd, line.encode("utf-8", "replace"))
            if self.max_bytes and os.fstat(fd).st_size > self.max_bytes:
                self.rotate()
        except (OSError, ValueError):
            pass
        finally:
            os.close(fd)

    def rotate(self):
        """FILE -> FILE.1 -> ... -> FILE.<backups> (the oldest is dropped)."""
        import fcntl
        lock = os.open(self.path + ".lock", os.O_WRONLY | os.O_CREAT, 0o640)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if os.stat(self.path).st_size <= self.max_bytes:
                    return  # another plugin rotated it meanwhile
            except FileNotFoundError:
                return
            for i in range(max(self.backups, 1) - 1, 0, -1):
                try:
                    os.rename("%s.%d" % (self.path, i), "%s.%d" % (self.path, i + 1))
                except FileNotFoundError:
                    pass
            os.rename(self.path, self.path + ".1")
        finally:
            os.close(lock)  # releases the flock

    def info(self, msg):
        self.write("info", msg)

    def error(self, msg):
        self.write("error", msg)


def pod_context(args):
    """The ` verb=... containerID=...` tail of every line of one CNI call."""
    parts = [("verb", args.command), ("containerID", args.container_id),
             ("ifname", args.ifname), ("podNamespace", args.k8s_namespace),
             ("podName", args.k8s_pod_name)]
    return "".join(" %s=%s" % (k, v) for k, v in parts if v)
