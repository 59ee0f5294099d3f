"""The plugin's log: one line per event appended to the netconf's `log-file`.

Not the `logging` module: it costs ~5 ms to import on every pod operation,
and the plugin writes a handful of lines per call. The plugin's stdout is
reserved for the CNI result; a log that cannot be written is dropped
silently rather than failing a pod.
"""

import os
import time

DEFAULT_LOG_FILE = "/var/log/cilium-cni.log"


class PluginLog:
    __slots__ = ("path", "context")

    def __init__(self, path=DEFAULT_LOG_FILE, context=""):
        self.path = path
        self.context = context

    def write(self, level, msg):
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
        line = "%s.%03dZ %s pid=%d %s %s\n" % (
            stamp, int(now * 1000) % 1000, level, os.getpid(), self.context, msg)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        except OSError:
            return
        try:
            os.write(fd, line.encode("utf-8", "replace"))
        except OSError:
            pass
        finally:
            os.close(fd)

    def info(self, msg):
        self.write("info", msg)

    def error(self, msg):
        self.write("error", msg)
