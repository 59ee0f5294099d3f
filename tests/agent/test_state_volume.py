"""A small state volume: the store's log stays bounded, a full volume is a
"try again later" naming the path and free space, and the store recovers by
itself once space returns. Runs on a real 2 MiB tmpfs (root)."""

import os
import subprocess

import pytest

from agent.store import WAL_LIMIT_BYTES, Store, StoreFull
from cni.errors import TRY_AGAIN_LATER

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("require_root")]


@pytest.fixture
def small_volume(tmp_path):
    mnt = tmp_path / "vol"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _endpoint(i, size=3000):
    return {"key": "c%d:eth0" % i, "id": i + 1, "pad": "x" * size}


def test_log_stays_bounded_over_many_cycles(small_volume):
    store = Store(str(small_volume / "state"))
    try:
        for i in range(600):  # ~2 MB of writes each way: filled the volume before
            store.put_endpoint(_endpoint(i))
            store.delete_endpoint("c%d:eth0" % i)
            assert os.path.getsize(store.path + "-wal") <= WAL_LIMIT_BYTES + (64 << 10)
        assert store.endpoints() == []
    finally:
        store.close()


def test_full_volume_is_retryable_and_recovers(small_volume):
    store = Store(str(small_volume / "state"))
    filler = small_volume / "filler"
    try:
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:  # take every block left
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        with pytest.raises(StoreFull) as caught:
            for i in range(50):
                store.put_endpoint(_endpoint(i, size=20000))
        err = caught.value
        assert err.cni_code == TRY_AGAIN_LATER and err.status == 503
        assert store.path in err.message and "free" in err.message, err.message
        assert store.volume()["lastError"]
        done = {ep["key"] for ep in store.endpoints()}  # whole writes only
        assert all(ep["pad"] == "x" * 20000 for ep in store.endpoints())
        filler.unlink()
        store.put_endpoint(_endpoint(99, size=20000))  # space is back: no restart needed
        assert {ep["key"] for ep in store.endpoints()} == done | {"c99:eth0"}
        assert store.volume()["lastError"] is None
    finally:
        store.close()
