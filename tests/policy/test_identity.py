"""Identity allocation: stable numbers across restarts, references, grace period."""

import pytest

from agent.identity import CIDR_FIRST, ENDPOINT_FIRST, IdentityAllocator
from agent.store import Store

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_same_labels_same_number_and_restart(tmp_path):
    store = Store(str(tmp_path))
    ids = IdentityAllocator(store)
    web, created = ids.acquire("k8s:app=web")
    assert (web, created) == (ENDPOINT_FIRST, True)
    assert ids.acquire("k8s:app=web") == (web, False)
    db, _ = ids.acquire("k8s:app=db")
    assert db == ENDPOINT_FIRST + 1
    store.close()
    restarted = IdentityAllocator(Store(str(tmp_path)))
    assert restarted.acquire("k8s:app=db") == (db, False)
    assert restarted.acquire("k8s:app=web") == (web, False)


def test_released_after_grace_period_only(tmp_path):
    clock = Clock()
    ids = IdentityAllocator(Store(str(tmp_path)), grace_seconds=60, clock=clock)
    web, _ = ids.acquire("k8s:app=web")
    ids.acquire("k8s:app=web")
    ids.release(web)
    clock.now += 120
    assert ids.expire() == []  # one reference left
    ids.release(web)
    clock.now += 59
    assert ids.expire() == []
    assert ids.acquire("k8s:app=web") == (web, False)  # back in use: kept
    ids.release(web)
    clock.now += 60
    assert ids.expire() == [web]
    assert web not in ids.all()


def test_restored_identities_expire_unless_retaken(tmp_path):
    clock = Clock()
    store = Store(str(tmp_path))
    first = IdentityAllocator(store, grace_seconds=10, clock=clock)
    a, _ = first.acquire("k8s:app=a")
    b, _ = first.acquire("k8s:app=b")
    second = IdentityAllocator(store, grace_seconds=10, clock=clock)
    assert second.acquire("k8s:app=a") == (a, False)
    clock.now += 11
    assert second.expire() == [b]


def test_cidr_identities_have_their_own_range(tmp_path):
    ids = IdentityAllocator(Store(str(tmp_path)))
    number, created = ids.acquire("cidr:10.0.0.0/8;reserved:world", cidr=True)
    assert (number, created) == (CIDR_FIRST, True)
    assert ids.acquire("k8s:app=x")[0] == ENDPOINT_FIRST


def test_listing_includes_reserved(tmp_path):
    ids = IdentityAllocator(Store(str(tmp_path)))
    ids.acquire("k8s:app=web")
    rows = {r["id"]: r for r in ids.listing()}
    assert rows[1]["labels"] == "reserved:host" and rows[1]["reserved"]
    assert rows[2]["labels"] == "reserved:world"
    assert rows[ENDPOINT_FIRST]["references"] == 1
