"""agent.memory: what a large request freed leaves the process (see its docstring).

The test builds what a policy import leaves: cyclic garbage made on
another thread (the worker's, with its own malloc arena) among objects that
stay, then asks for it back: a collection alone left 193 of 204 MB, a trim
alone all of it. scripts/bench_bodies.py measures the real agent.
"""

import gc
import logging
import threading

import pytest

from agent import memory

pytestmark = pytest.mark.unit


def make_cyclic_garbage(megabytes, survivors):
    """About `megabytes` MB of lists in cycles, unreachable once built, made
    on a thread of its own; every 64th a small survivor in `survivors` keeps
    heap pages between the holes, so free() alone cannot shrink the heap."""
    def build():
        for i in range(megabytes * 1000):
            a = [None] * 120  # ~1 KB of item storage: glibc's malloc, not pymalloc
            b = [a] * 120
            a[0] = b
            if i % 64 == 0:
                survivors.append(bytes(600) + bytes([i % 256]))
    thread = threading.Thread(target=build)
    thread.start()
    thread.join()


def test_give_back_returns_the_pages_of_collected_cycles(caplog):
    was_enabled = gc.isenabled()
    gc.disable()  # the cycles stay until give_back collects them, as between full collections
    try:
        before = memory.rss_kib()
        survivors = []
        make_cyclic_garbage(100, survivors)
        grown = memory.rss_kib()
        assert grown - before > 50 << 10, "the garbage did not grow RSS: %d -> %d KiB" % (
            before, grown)
        with caplog.at_level(logging.DEBUG):
            memory.give_back(logging.getLogger("test"))
        after = memory.rss_kib()
    finally:
        if was_enabled:
            gc.enable()
    # most of what the garbage took is back with the kernel
    assert after - before < (grown - before) / 4, "RSS %d -> %d -> %d KiB" % (
        before, grown, after)
    assert "memory given back after a large request" in caplog.text
