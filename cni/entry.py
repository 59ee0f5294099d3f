"""The plugin as a process: answer the runtime, then end at once.

`cli.entry.main` (the executable) calls `plugin()` when CNI_COMMAND is set,
and so does the built binary's launcher (scripts/launcher.c) without
loading anything else. Standard library only, like the plugin itself.
"""

import os
import sys


def plugin():
    """The CNI plugin call: answer the runtime, then end the process.

    Also the entry of the built binary's launcher (scripts/launcher.c), which
    runs it when CNI_COMMAND is set.
    """
    from cni.plugin import main as plugin_main
    # Bytes: the netconf must be UTF-8 whatever the locale, and the plugin
    # says so (code 6) rather than the text layer raising or guessing.
    stdin = sys.stdin.buffer if sys.stdin is not None else _NoStdin()
    _exit_now(plugin_main(os.environ, stdin, sys.stdout))


class _NoStdin:
    """Standard input closed (no fd 0): nothing to read, which the plugin reports."""

    def read(self):
        return b""


def _exit_now(rc):
    """End a plugin call without the interpreter's teardown.

    Freeing every module and object at exit costs ~2 ms (1.8 ms with the
    source launcher, 2.4 ms frozen, measured with strace and start-up loops;
    docs/benchmarks.md), paid by every pod operation for nothing: the
    kernel reclaims the memory anyway. The plugin writes its log with
    os.write and registers no atexit handlers, so stdout and stderr are the
    only buffers left; if stdout cannot be flushed the runtime got no
    answer, so the exit code cannot be 0.
    """
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        rc = rc or 1
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os._exit(rc)
