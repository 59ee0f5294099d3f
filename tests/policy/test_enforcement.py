"""Enforcement wiring with an in-memory datapath: fail closed, deltas, identities.

The real datapath is exercised end to end in tests/policy/test_pods.py; this
fake stands in only where a failure must be injected.
"""

import logging

import pytest

from agent.enforcement import FLAG_INGRESS, Enforcement
from agent.store import Store

pytestmark = pytest.mark.unit

POLICY = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress: [{fromEndpoints: [{matchLabels: {app: client}}]}]
"""


class FakeEndpoints(dict):
    """ifindex -> (ep_id, identity, flags), written as `datapath.endpoints` would."""

    def set(self, ifindex, ep_id, identity=0, flags=0):
        self[ifindex] = (ep_id, identity, flags)


class FakeIpcache(dict):
    """prefix -> identity, written as `datapath.ipcache` would; `remote`:
    the prefixes written as another node's pods."""

    def __init__(self):
        super().__init__()
        self.remote = set()

    def set(self, cidr, identity, remote=False):
        self[cidr] = identity
        (self.remote.add if remote else self.remote.discard)(cidr)

    def delete(self, cidr):
        return self.pop(cidr, None) is not None

    def entries(self):
        return dict(self)


class FakePolicy:
    """`datapath.policy`: ep_id -> set of entries in `rows`; writes can be made to fail."""

    def __init__(self):
        self.rows = {}
        self.fail = False

    def update(self, ep_id, adds, deletes):
        if self.fail:
            raise OSError(28, "no space left in the policy map")
        entries = self.rows.setdefault(ep_id, set())
        entries.difference_update(deletes)
        entries.update(adds)


class FakeDatapath:
    def __init__(self):
        self.endpoints, self.ipcache, self.policy = FakeEndpoints(), FakeIpcache(), FakePolicy()

    def remove_endpoint(self, ifindex, ep_id):
        self.endpoints.pop(ifindex, None)
        self.policy.rows.pop(ep_id, None)


def endpoint(ep_id, ifindex, address):
    return {"id": ep_id, "host": {"ifindex": ifindex},
            "interface": {"addresses": [address]}}


def request(app):
    return {"netconfArgs": {"cni": {"labels": [{"key": "app", "value": app}]}},
            "k8s": {"namespace": "default"}}


@pytest.fixture
def enf(tmp_path):
    return Enforcement(Store(str(tmp_path)), FakeDatapath(), logging.getLogger("test"))


def test_policy_write_failure_fails_the_endpoint_and_leaves_nothing(enf):
    enf.import_files([{"source": "p.yaml", "text": POLICY}])
    enf._dp.policy.fail = True
    web = endpoint(1, 11, "10.0.0.2/24")
    with pytest.raises(OSError):
        enf.attach_endpoint(web, enf.labels_for(request("web")))
    assert enf._dp.endpoints == {} and enf._dp.ipcache == {} and enf._dp.policy.rows == {}
    assert all(r["references"] in (0, None) for r in enf.identity_rows())


def test_new_identity_updates_only_the_selecting_endpoint(enf):
    enf.import_files([{"source": "p.yaml", "text": POLICY}])
    web = endpoint(1, 11, "10.0.0.2/24")
    enf.attach_endpoint(web, enf.labels_for(request("web")))
    assert enf._dp.endpoints[11] == (1, web["identity"], FLAG_INGRESS)
    assert enf._dp.policy.rows[1] == set()  # enforced, nothing allowed yet
    client = endpoint(2, 12, "10.0.0.3/24")
    enf.attach_endpoint(client, enf.labels_for(request("client")))
    assert enf._dp.policy.rows[1] == {("ingress", client["identity"], 0, 0, 0, False)}
    assert enf._dp.ipcache["10.0.0.3/32"] == client["identity"]
    assert enf._dp.endpoints[12][2] == 0  # the client is selected by nothing


def test_label_change_moves_identity_and_ipcache(enf):
    enf.import_files([{"source": "p.yaml", "text": POLICY}])
    web = endpoint(1, 11, "10.0.0.2/24")
    enf.attach_endpoint(web, enf.labels_for(request("web")))
    other = endpoint(2, 12, "10.0.0.3/24")
    enf.attach_endpoint(other, enf.labels_for(request("other")))
    old = other["identity"]
    enf.change_labels(other, ["app=client"], [])
    assert other["identity"] != old
    assert enf._dp.ipcache["10.0.0.3/32"] == other["identity"]
    assert ("ingress", other["identity"], 0, 0, 0, False) in enf._dp.policy.rows[1]


def test_rejected_import_changes_nothing(enf):
    enf.import_files([{"source": "p.yaml", "text": POLICY}])
    from agent.errors import BadRequest
    with pytest.raises(BadRequest, match=r"bad.yaml:\d+"):
        enf.import_files([{"source": "q.yaml", "text": POLICY.replace("web}", "web2}")},
                          {"source": "bad.yaml", "text": "kind: [unclosed"}])
    assert [r["name"] for r in enf.policy_view()["rules"]] == ["web"]


def test_delete_by_name_persists_the_rest(tmp_path):
    store = Store(str(tmp_path))
    enf = Enforcement(store, FakeDatapath(), logging.getLogger("test"))
    two = POLICY + "---\n" + POLICY.replace("{name: web}", "{name: db, namespace: prod}")
    enf.import_files([{"source": "p.yaml", "text": two}])
    assert enf.delete_policy(name="web") == 1
    again = Enforcement(store, FakeDatapath(), logging.getLogger("test"))
    assert again.restore_policy() == 1
    assert [(r["name"], r["namespace"]) for r in again.policy_view()["rules"]] == [("db", "prod")]
