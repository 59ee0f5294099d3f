"""The multi-node lab (scripts/clusterlab.py) as a fixture: one per module,
as building it (3 nodes with an agent each, 3 etcd members) takes seconds."""

import pytest

from scripts import clusterlab


@pytest.fixture(scope="module")
def cluster(require_root):
    with clusterlab.Cluster(nodes=3, etcd=True) as c:
        yield c
