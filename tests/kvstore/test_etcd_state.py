"""The cluster's shared state against a real etcd: identities allocated by
compare-and-swap, the node's lease and publisher, identity collection, and
the list+watch that resumes, re-lists after compaction and skips bad values."""

import logging
import queue
import threading
import time

import pytest

from agent.errors import KvstoreUnavailable
from agent.identity import IdentityAllocator
from agent.kvstore import layout
from agent.kvstore.etcd import COMPACTED, Etcd, drain
from agent.kvstore.identities import ClusterIdentities
from agent.kvstore.node import IdentityCollector, Publisher
from agent.kvstore.sync import Sync
from agent.store import Store

pytestmark = pytest.mark.e2e

LOG = logging.getLogger("kvstore-test")


class Node:
    """What one agent has of the cluster, without the datapath."""

    def __init__(self, etcd, prefix, name, state_dir, ttl=5, grace=300.0):
        self.etcd = Etcd([etcd.url], timeout=2)
        self.keys = layout.Layout(prefix)
        self.store = Store(str(state_dir))
        self.publisher = Publisher(self.etcd, str(state_dir), ttl, LOG)
        self.ids = ClusterIdentities(self.etcd, self.keys, name, self.publisher,
                                     IdentityAllocator(self.store), grace, log=LOG)
        self.name = name

    def join(self):
        self.publisher.open_lease()
        self.publisher.start()
        return self

    def learn(self):
        """Everything under identities/ once, as the agent's first sync does."""
        _, items = self.etcd.list(self.keys.identities)
        return self.ids.apply([("put", i.key[len(self.keys.identities):], i.value,
                                i.create_revision) for i in items])

    def close(self):
        self.publisher.stop()
        self.etcd.close()
        self.store.close()


@pytest.fixture
def nodes(etcd, prefix, tmp_path):
    made = []

    def make(name, **kw):
        node = Node(etcd, prefix, name, tmp_path / name, **kw)
        made.append(node)
        return node.join()
    yield make
    for node in made:
        node.close()


def test_one_label_set_raced_on_three_nodes_gets_one_number(nodes, etcd, prefix):
    three = [nodes("n%d" % i) for i in range(3)]
    for round_ in range(20):
        text = "cni:app=race%d" % round_
        got, barrier = [None] * 3, threading.Barrier(3)

        def allocate(i, text=text, got=got, barrier=barrier):
            barrier.wait()
            got[i] = three[i].ids.acquire(text)[0]
        threads = [threading.Thread(target=allocate, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert got[0] is not None and got[0] == got[1] == got[2], (text, got)
    for node in three:
        assert node.publisher.flush(5)
    keys = etcd.keys(prefix + "/identities/v1/")
    ids = [k for k in keys if "/id/" in k]
    assert len(ids) == 20  # one per label set, never two
    users = [k for k in keys if "/users/" in k]
    assert len(users) == 60  # every node uses every one


def test_different_label_sets_get_different_numbers_everywhere(nodes):
    a, b = nodes("a"), nodes("b")
    x = a.ids.acquire("cni:app=x")[0]
    y = b.ids.acquire("cni:app=y")[0]  # b has not learnt x: its first pick collides
    assert x != y
    b.learn()
    assert b.ids.acquire("cni:app=x")[0] == x
    assert a.ids.acquire("cni:app=x") == (x, False)


def test_a_known_label_set_needs_no_etcd_and_a_new_one_fails_fast_naming_it(nodes, etcd):
    a = nodes("a")
    known = a.ids.acquire("cni:app=known")[0]
    etcd.kill()
    try:
        assert a.ids.acquire("cni:app=known") == (known, False)
        started = time.monotonic()
        with pytest.raises(KvstoreUnavailable) as err:
            a.ids.acquire("cni:app=new-while-down")
        assert time.monotonic() - started < 6
        assert "etcd at http://127.0.0.1:%d" % etcd.client in err.value.message
        assert "new label set" in err.value.message
    finally:
        etcd.start()
    # queued work completes once etcd is back: the new set allocates
    assert a.ids.acquire("cni:app=new-while-down")[0] != known


def test_use_keys_are_written_when_etcd_returns(nodes, etcd, prefix):
    a, b = nodes("a"), nodes("b")
    number = a.ids.acquire("cni:app=later")[0]
    b.learn()
    etcd.kill()
    try:
        assert b.ids.acquire("cni:app=later") == (number, False)  # from memory
        assert not b.publisher.flush(0.5)
    finally:
        etcd.start()
    assert b.publisher.flush(15)
    assert "%s/identities/v1/users/%d/b" % (prefix, number) in etcd.keys(prefix)


def test_a_lease_is_kept_across_a_restart_and_its_keys_expire_with_it(etcd, prefix, tmp_path):
    first = Node(etcd, prefix, "a", tmp_path / "a", ttl=3).join()
    first.publisher.want(prefix + "/nodes/v1/a", b'{"v":1}')
    assert first.publisher.flush(5)
    lease = first.publisher.lease
    first.publisher.stop()  # the agent stops (upgrade): no more keepalives
    first.etcd.close()
    second = Node(etcd, prefix, "a", tmp_path / "a", ttl=3).join()
    try:
        assert second.publisher.lease == lease and second.publisher.reused_lease
        assert etcd.keys(prefix) == [prefix + "/nodes/v1/a"]
        time.sleep(4)  # kept alive by the new run
        assert etcd.keys(prefix) == [prefix + "/nodes/v1/a"]
        # the previous run's keys nobody wants now are pruned
        assert second.publisher.prune() == 1
        assert etcd.keys(prefix) == []
        second.publisher.want(prefix + "/nodes/v1/a", b'{"v":1}')
        assert second.publisher.flush(5)
    finally:
        second.publisher.stop()
        second.etcd.close()
    deadline = time.monotonic() + 10
    while etcd.keys(prefix) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert etcd.keys(prefix) == []  # the node died: its lease took its keys


def test_the_collector_deletes_only_identities_no_node_uses(nodes, etcd, prefix):
    a, b = nodes("a", grace=0.0), nodes("b", grace=0.0)
    kept = a.ids.acquire("cni:app=kept")[0]
    gone = a.ids.acquire("cni:app=gone")[0]
    b.learn()
    b.ids.acquire("cni:app=gone")
    assert b.publisher.flush(5)
    collector = IdentityCollector(a.etcd, a.keys, "a", a.publisher, 0.0, LOG)
    a.ids.release(gone)
    a.ids.expire()
    assert a.publisher.flush(5)
    assert collector.run_once() == []  # b still uses it
    b.ids.release(gone)
    b.ids.expire()
    assert b.publisher.flush(5)
    assert collector.run_once() == [gone]
    keys = etcd.keys(prefix)
    assert "%s/identities/v1/id/%d" % (prefix, kept) in keys
    assert not any(k.endswith("/id/%d" % gone) or k.endswith("=gone") for k in keys)
    # only one node collects: the other finds the leader key taken
    other = IdentityCollector(b.etcd, b.keys, "b", b.publisher, 0.0, LOG)
    assert other.run_once() == [] and not other.leader and collector.leader


def test_a_compacted_watch_relists_and_applies_what_it_missed(etcd, prefix):
    client = Etcd([etcd.url])
    seen, lock = [], threading.Lock()

    def handler(changes):
        with lock:
            seen.extend((kind, tail) for kind, tail, _, _ in changes)
    try:
        client.put(prefix + "/ip/v1/a", b"1")
        client.put(prefix + "/ip/v1/b", b"2")
        sync = Sync(client, prefix + "/", [(prefix + "/ip/v1/", handler)],
                    lambda fn, *a: fn(*a), LOG)
        sync.list_once()
        assert sorted(seen) == [("put", "a"), ("put", "b")]
        seen.clear()
        # while "away": a changes, b goes, c comes; history is compacted
        client.put(prefix + "/ip/v1/a", b"1b")
        client.delete(prefix + "/ip/v1/b")
        client.put(prefix + "/ip/v1/c", b"3")
        etcd.ctl("compact", str(client.revision()))
        sync.start_watch()
        deadline = time.monotonic() + 10
        while sync.relists == 0 or len(seen) < 3:
            assert time.monotonic() < deadline, seen
            time.sleep(0.05)
        assert sorted(seen) == [("delete", "b"), ("put", "a"), ("put", "c")]
        seen.clear()
        client.put(prefix + "/ip/v1/d", b"4")  # and it watches on
        client.put(prefix + "/ip/v1/c", b"3")  # the same value again: not applied
        deadline = time.monotonic() + 10
        while not seen:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.3)
        assert seen == [("put", "d")]
        sync.stop()
    finally:
        client.close()


def test_a_watch_resumes_after_etcd_restarts(etcd, prefix):
    client = Etcd([etcd.url])
    sink = queue.Queue()
    try:
        start = client.put(prefix + "/x", b"0") + 1
        handle = client.watch(prefix + "/", start, sink)
        client.put(prefix + "/x", b"1")
        assert [e.value for e in drain(sink, 5)] == [b"1"]
        etcd.kill()
        etcd.start()
        deadline = time.monotonic() + 20
        while True:  # the first put after the restart may race the reconnect
            try:
                client.put(prefix + "/x", b"2")
                break
            except Exception:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        got = []
        while b"2" not in got:
            batch = drain(sink, 10)
            assert batch and batch != COMPACTED
            got += [e.value for e in batch]
        assert got == [b"2"]  # nothing twice, nothing lost
        handle.cancel()
    finally:
        client.close()


@pytest.mark.parametrize("tail,value", [
    ("id/300", b"not json"),
    ("id/300", b'{"v":2,"labels":"cni:a=b"}'),
    ("id/300", b'{"v":1,"labels":7}'),
    ("id/12", b'{"v":1,"labels":"cni:a=b"}'),
    ("id/300", b'{"v":1,"labels":"' + b"x" * 20000 + b'"}'),
])
def test_bad_identity_values_are_skipped(nodes, etcd, prefix, tail, value):
    a = nodes("a")
    client = a.etcd
    client.put(prefix + "/identities/v1/" + tail, value)
    added, removed = a.learn()
    assert added == {} and removed == []
    assert 300 not in a.ids.all() and 12 not in a.ids.all()
