"""ipcache claims: endpoint > host > remote pod > CIDR, whatever the order; reconcile after restart."""

import pytest

from agent.ipcache import CIDR, ENDPOINT, HOST, REMOTE, IpCache
from tests.policy.test_enforcement import FakeDatapath

pytestmark = pytest.mark.unit


def test_strongest_claim_wins_in_any_order_and_returns():
    dp = FakeDatapath()
    ipc = IpCache(dp.ipcache)
    ipc.claim("10.1.2.10/32", "cidr", CIDR, 1 << 24)
    assert dp.ipcache == {"10.1.2.10/32": 1 << 24}
    ipc.claim("10.1.2.10/32", ("endpoint", 7), ENDPOINT, 300)
    assert dp.ipcache == {"10.1.2.10/32": 300}
    ipc.claim("10.1.2.10/32", "host", HOST, 1)
    assert dp.ipcache == {"10.1.2.10/32": 300}
    ipc.release("10.1.2.10/32", ("endpoint", 7))
    assert dp.ipcache == {"10.1.2.10/32": 1}
    ipc.release("10.1.2.10/32", "host")
    assert dp.ipcache == {"10.1.2.10/32": 1 << 24}
    ipc.release("10.1.2.10/32", "cidr")
    assert dp.ipcache == {}
    ipc.release("10.1.2.10/32", "cidr")  # twice is fine


def test_reconcile_drops_unclaimed_and_fixes_stale_entries():
    dp = FakeDatapath()
    dp.ipcache.update({"10.0.0.9/32": 400, "10.0.0.2/32": 999})  # left by an earlier agent
    ipc = IpCache(dp.ipcache)
    ipc.claim("10.0.0.2/32", ("endpoint", 1), ENDPOINT, 300)
    assert ipc.reconcile() == 1
    assert dp.ipcache == {"10.0.0.2/32": 300}


def test_another_nodes_pod_is_below_local_claims_and_marked_remote():
    dp = FakeDatapath()
    ipc = IpCache(dp.ipcache)
    ipc.claim("10.1.2.10/32", "cidr", CIDR, 1 << 24)
    ipc.claim("10.1.2.10/32", "remote", REMOTE, 500)
    assert dp.ipcache == {"10.1.2.10/32": 500} and dp.ipcache.remote == {"10.1.2.10/32"}
    ipc.claim("10.1.2.10/32", "host", HOST, 1)  # this node's own address wins
    assert dp.ipcache == {"10.1.2.10/32": 1} and dp.ipcache.remote == set()
    ipc.claim("10.1.2.10/32", ("endpoint", 7), ENDPOINT, 300)
    ipc.release("10.1.2.10/32", "host")
    assert dp.ipcache == {"10.1.2.10/32": 300} and dp.ipcache.remote == set()
    ipc.release("10.1.2.10/32", ("endpoint", 7))  # a stale remote entry comes back only now
    assert dp.ipcache == {"10.1.2.10/32": 500} and dp.ipcache.remote == {"10.1.2.10/32"}
    ipc.release("10.1.2.10/32", "remote")
    assert dp.ipcache == {"10.1.2.10/32": 1 << 24}
