"""Give the agent's freed memory back to the node after a large request.

A policy import of 10,000 rules (3.4 MB of YAML) builds ~200 MB of
short-lived Python objects (tracemalloc's peak). Once they are freed the
process kept them: RSS 173 -> 249 MB after the import and the delete of its
rules, 295 MB after more large bodies, for good (scripts/bench_bodies.py).
Nothing of the requests stayed alive (tracemalloc: 30 KB); what held the
pages was, measured in-process, first cyclic garbage the collector had not
reached yet (a full collection: -37 MB), then free memory in glibc's heaps
that glibc keeps for later (`malloc_trim(0)`: -30 MB more). Either alone
did little: trimming before the collection frees nothing that the cycles
hold, and one collection leaves the pages in glibc. Neither capping malloc
arenas nor bypassing pymalloc (PYTHONMALLOC=malloc) changed the figures.
"""

import ctypes
import gc
import os
import time

_libc = None


def _malloc_trim():
    """glibc's malloc_trim, or None where the C library has none (musl)."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None)
    return getattr(_libc, "malloc_trim", None)


def rss_kib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def give_back(log):
    """Collect cyclic garbage, then return glibc's free pages to the kernel.

    A full collection costs milliseconds per 100,000 live objects: call it
    after rare, large requests only, never on the plugin's path."""
    before, started = rss_kib(), time.monotonic()
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)  # frees in every arena, not only the calling thread's
    log.debug("memory given back after a large request: RSS %d -> %d KiB in %.1f ms", before,
              rss_kib(), (time.monotonic() - started) * 1000)
