"""The informer against the stand-in API server, through a kubeconfig:
the first sync, changes in order, bookmarks, a cut watch resumed without
duplicates or losses, a 410 while an object was deleted, the server down
at start, the back-off's bounds, and a clean stop."""

import threading
import time

import pytest

from agent.k8s import resources
from agent.k8s.client import Connection
from agent.k8s.informer import Backoff, Informer
from tests.k8s.objects import cnp, pod

pytestmark = pytest.mark.unit


class Recorder:
    """A handler that keeps what it was given, on which thread."""

    def __init__(self):
        self.seen = []
        self.threads = set()
        self._cond = threading.Condition()

    def __call__(self, kind, obj):
        with self._cond:
            self.seen.append((kind, obj["metadata"]["name"], obj["metadata"]["resourceVersion"]))
            self.threads.add(threading.current_thread().name)
            self._cond.notify_all()

    def wait(self, count, timeout=10):
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.seen) >= count, timeout), self.seen
            return [(k, n) for k, n, _ in self.seen]


def wait_for(predicate, timeout=10):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture
def informers():
    made = []
    yield made
    for inf in made:
        assert inf.stop(5), "the informer's thread did not end"


def start(informers, conn, resource=resources.PODS, **kw):
    rec = Recorder()
    kw.setdefault("backoff", Backoff(base=0.02, cap=0.2))
    inf = Informer(conn, resource, rec, **kw).start()
    informers.append(inf)
    return inf, rec


def test_initial_sync_then_changes_in_order(apiserver, conn, informers):
    apiserver.create(pod("a"))
    apiserver.create(pod("b", namespace="other"))
    inf, rec = start(informers, conn)
    assert inf.wait_synced(5)
    assert sorted(rec.wait(2)) == [("added", "a"), ("added", "b")]
    assert inf.get("b", "other")["kind"] == "Pod"   # filled in, as the list leaves it out
    apiserver.update(pod("a", labels={"app": "x"}))
    apiserver.create(pod("c"))
    apiserver.delete("Pod", "b", "other")
    apiserver.update(pod("c", labels={"app": "y"}))
    assert rec.wait(6)[2:] == [("modified", "a"), ("added", "c"), ("deleted", "b"),
                               ("modified", "c")]
    rvs = [int(rv) for _, _, rv in rec.seen[2:]]
    assert rvs == sorted(rvs)
    stats = inf.stats()
    assert stats["synced"] and stats["events"] == 6 and stats["objects"] == 2
    assert stats["relists"] == 0 and stats["errors"] == 0
    assert stats["resource_version"] == str(apiserver.resource_version)


def test_handlers_run_on_the_thread_the_caller_chooses(apiserver, conn, informers):
    from concurrent.futures import ThreadPoolExecutor
    worker = ThreadPoolExecutor(1, thread_name_prefix="agent-worker")
    try:
        inf, rec = start(informers, conn, submit=lambda fn, *a: worker.submit(fn, *a).result())
        apiserver.create(pod("a"))
        rec.wait(1)
        assert rec.threads == {"agent-worker_0"}
    finally:
        inf.stop()
        worker.shutdown()


def test_custom_resources_cluster_scoped_and_namespaced(apiserver, conn, informers):
    from tests.k8s.objects import ccnp
    apiserver.create(ccnp("all"))
    apiserver.create(cnp("one", namespace="prod"))
    ccnps, rec1 = start(informers, conn, resources.CILIUM_CLUSTERWIDE_NETWORK_POLICIES)
    cnps, rec2 = start(informers, conn, resources.CILIUM_NETWORK_POLICIES)
    assert rec1.wait(1) == [("added", "all")] and rec2.wait(1) == [("added", "one")]
    assert cnps.get("one", "prod")["spec"]["endpointSelector"] == {"matchLabels": {"app": "web"}}


def test_bookmarks_advance_the_resource_version(apiserver, conn, informers):
    inf, rec = start(informers, conn)
    assert inf.wait_synced(5)
    apiserver.create(cnp("elsewhere"))       # another resource moves the global version
    apiserver.create(cnp("elsewhere-2"))
    assert inf.resource_version != str(apiserver.resource_version)
    wait_for(lambda: apiserver.watch_count() == 1)
    apiserver.bookmark()
    wait_for(lambda: inf.resource_version == str(apiserver.resource_version))
    assert rec.seen == [] and inf.stats()["events"] == 0


def test_cut_watch_resumes_from_the_last_version_without_duplicates(apiserver, conn, informers):
    inf, rec = start(informers, conn)
    apiserver.create(pod("a"))
    rec.wait(1)
    for round in range(3):
        wait_for(lambda r=round: apiserver.watches_started == r + 1
                 and apiserver.watch_count() == 1)
        apiserver.drop_watches()
        apiserver.create(pod("while-away-%d" % round))   # made while no watch is open
    apiserver.update(pod("a", labels={"v": "2"}))
    got = rec.wait(5)
    time.sleep(0.3)   # nothing more may come
    assert [x for x, _, _ in rec.seen] == [k for k, _ in got] and len(rec.seen) == 5
    assert got == [("added", "a"), ("added", "while-away-0"), ("added", "while-away-1"),
                   ("added", "while-away-2"), ("modified", "a")]
    lists = [q for m, p, q in apiserver.requests if p == "/api/v1/pods" and "watch" not in q]
    assert len(lists) == 1, "a cut watch is resumed, not re-listed"
    watches = [q for m, p, q in apiserver.requests if q.get("watch")]
    assert all(q["allowWatchBookmarks"] == "true" for q in watches)
    assert inf.stats()["relists"] == 0 and inf.stats()["errors"] == 3


def test_410_relists_and_delivers_the_deletes_missed(apiserver, conn, informers):
    for name in ("keep", "change", "gone"):
        apiserver.create(pod(name))
    inf, rec = start(informers, conn)
    rec.wait(3)
    wait_for(lambda: apiserver.watch_count() == 1)
    apiserver.fail_next_watches(1)
    apiserver.compact()          # and the history is gone: the resume itself is too old
    apiserver.drop_watches()
    apiserver.delete("Pod", "gone")
    apiserver.update(pod("change", labels={"v": "2"}))
    apiserver.compact()
    apiserver.create(pod("new"))
    apiserver.compact()
    got = rec.wait(6)
    time.sleep(0.3)
    assert sorted(got[3:]) == [("added", "new"), ("deleted", "gone"), ("modified", "change")]
    assert len(rec.seen) == 6, "the unchanged object is not delivered again"
    assert inf.stats()["relists"] >= 1
    assert inf.get("gone", "default") is None and inf.get("keep", "default") is not None
    apiserver.create(pod("after"))
    assert rec.wait(7)[-1] == ("added", "after")


def test_a_410_error_event_on_a_live_watch_relists(apiserver, conn, informers):
    apiserver.create(pod("a"))
    inf, rec = start(informers, conn)
    rec.wait(1)
    apiserver.fail_next_watches(1)
    wait_for(lambda: apiserver.watch_count() == 1)
    apiserver.drop_watches()      # the resume meets the 410
    wait_for(lambda: inf.stats()["relists"] == 1)
    assert rec.seen[1:] == []     # nothing changed: nothing delivered


def test_recreated_under_the_same_name_is_a_delete_then_an_add(apiserver, conn, informers):
    apiserver.create(pod("a"))
    inf, rec = start(informers, conn)
    rec.wait(1)
    wait_for(lambda: apiserver.watch_count() == 1)
    apiserver.stop()
    apiserver.delete("Pod", "a")
    apiserver.create(pod("a", labels={"new": "yes"}))
    apiserver.compact()
    apiserver.start()
    assert rec.wait(3)[1:] == [("deleted", "a"), ("added", "a")]


def test_server_down_at_start_then_up(apiserver, kubeconfig, informers):
    apiserver.create(pod("a"))
    apiserver.stop()
    conn = Connection(kubeconfig)
    try:
        inf, rec = start(informers, conn)
        wait_for(lambda: inf.stats()["errors"] >= 3)
        assert not inf.synced.is_set()
        assert "refused" in inf.stats()["last_error"].lower() or "connect" in \
            inf.stats()["last_error"].lower()
        apiserver.start()
        assert inf.wait_synced(5)
        assert rec.wait(1) == [("added", "a")]
        apiserver.stop()               # and down again while watching
        apiserver.create(pod("b"))
        apiserver.start()
        assert rec.wait(2)[-1] == ("added", "b")
    finally:
        for inf in informers:
            inf.stop()
        conn.close()


def test_back_off_grows_is_jittered_and_bounded():
    lows = Backoff(base=0.1, cap=2.0, rand=lambda: 0.0)
    highs = Backoff(base=0.1, cap=2.0, rand=lambda: 1.0)
    assert [round(lows.next(), 3) for _ in range(7)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert [round(highs.next(), 3) for _ in range(7)] == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]
    for _ in range(100):
        highs.next()
    assert highs.next() == 2.0
    highs.reset()
    assert highs.next() == pytest.approx(0.1)


def test_retries_against_a_dead_server_are_spaced_by_the_back_off(apiserver, kubeconfig,
                                                                   informers):
    apiserver.stop()
    conn = Connection(kubeconfig)
    try:
        inf, _ = start(informers, conn, backoff=Backoff(base=0.05, cap=0.2))
        time.sleep(1.5)
        errors = inf.stats()["errors"]
        # 0.025-0.05, then doubling to the cap's 0.1-0.2: at least 7, at most ~16 in 1.5 s
        assert 5 <= errors <= 17, errors
    finally:
        assert inf.stop(2)
        conn.close()


def test_stop_ends_an_idle_watch_at_once(apiserver, conn, informers):
    inf, _ = start(informers, conn, watch_timeout=3600)
    assert inf.wait_synced(5)
    wait_for(lambda: apiserver.watch_count() == 1)
    t = time.monotonic()
    assert inf.stop(5)
    assert time.monotonic() - t < 1.0
    wait_for(lambda: apiserver.watch_count() == 0)


def test_the_server_ending_a_watch_is_resumed(apiserver, conn, informers):
    inf, rec = start(informers, conn, watch_timeout=0.5)   # timeoutSeconds 0 or 1
    assert inf.wait_synced(5)
    time.sleep(2.5)
    apiserver.create(pod("a"))
    assert rec.wait(1) == [("added", "a")]
    watches = [q for m, p, q in apiserver.requests if q.get("watch")]
    assert len(watches) >= 2 and inf.stats()["relists"] == 0
