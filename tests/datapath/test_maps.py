"""The new maps through the Datapath API: exact contract bytes (as bpftool
shows them), entry checks, clean-up, shape checks of the pins, events."""

import json
import os

import pytest

from datapath.errors import DatapathError
from datapath.loader import Datapath
from datapath.maps.ct import CT_F_CANON, CT_F_REVERSED, CT_VAL
from datapath.maps.endpoints import FLAG_EGRESS_ENFORCED, FLAG_INGRESS_ENFORCED
from tests import lab
from tests.datapath import packets as tr

pytestmark = pytest.mark.kernel

EP = 7


def dump(bpf_root, name):
    out = lab.sh("bpftool", "-j", "map", "dump", "pinned", f"{bpf_root}/maps/{name}").stdout
    # Per-CPU maps list "values" per CPU instead of one "value".
    return [(bytes(int(b, 16) for b in e["key"]), bytes(int(b, 16) for b in e.get("value", [])))
            for e in json.loads(out or "[]")]


def test_policy_key_bytes_are_the_contracts(datapath, bpf_root):
    datapath.policy.update(EP, [
        ("ingress", 256, 6, 8080, 16, False),  # port entry: 112 + 16
        ("egress", 0, 17, 8080, 13, True),  # port block: 112 + 13
        ("ingress", 2, 132, 0, 0, False),  # protocol, any port: 104
        ("egress", 70000, 0, 0, 0, False),  # L3: 96
    ])
    got = {k.hex() for k, v in dump(bpf_root, "policy")}
    assert got == {
        # prefixlen (host order) | ep_id BE | dir | deny | pad | identity BE | proto | pad | dport BE
        "80000000" "00000007" "01" "00" "0000" "00000100" "06" "00" "1f90",
        "7d000000" "00000007" "02" "01" "0000" "00000000" "11" "00" "1f90",
        "68000000" "00000007" "01" "00" "0000" "00000002" "84" "00" "0000",
        "60000000" "00000007" "02" "00" "0000" "00011170" "00" "00" "0000",
    }
    assert sorted(e for e, _ in datapath.policy.entries(EP)) == sorted([
        ("egress", 0, 17, 8080, 13, True), ("egress", 70000, 0, 0, 0, False),
        ("ingress", 2, 132, 0, 0, False), ("ingress", 256, 6, 8080, 16, False)])


def test_ipcache_endpoint_ct_and_metrics_bytes(datapath, bpf_root):
    datapath.ipcache.set("10.1.0.0/16", 300)
    datapath.ipcache.set("fd00::1", 301)
    assert sorted(k.hex() + "|" + v.hex() for k, v in dump(bpf_root, "ipcache")) == sorted([
        # prefixlen 32+16 | family | pad | addr[16]            | identity | pad
        "30000000" "04" "000000" "0a010000" + "00" * 12 + "|" "2c010000" "00000000",
        "a0000000" "06" "000000" "fd000000000000000000000000000001" "|" "2d010000" "00000000",
    ])
    assert datapath.ipcache.entries() == {"10.1.0.0/16": 300, "fd00::1/128": 301}
    datapath.endpoints.set(1, EP, identity=4000, flags=FLAG_EGRESS_ENFORCED)
    assert [(k.hex(), v.hex()) for k, v in dump(bpf_root, "endpoints")] == [
        ("01000000", "07000000" "a00f0000" "02000000" "00000000")]
    datapath.policy.update(EP, [("egress", 300, 6, 443, 16, False)])
    frame = tr.packet("10.9.9.9", "10.1.2.3", tr.TCP, 40000, 443)
    assert tr.run(datapath, "egress", frame) == tr.TC_ACT_UNSPEC
    [(key, value)] = dump(bpf_root, "ct")
    # Canonical order: 10.9.9.9 is "after" 10.1.2.3 (first u32, native order), so the
    # entry is keyed as the reply, ingress, and flagged reversed (2) | canonical (8).
    assert key.hex() == ("0a010203" + "00" * 12 + "0a090909" + "00" * 12 +
                         "01bb" "9c40" "06" "04" "01" "00" "07000000")  # ports BE, proto, family, dir, pad, ep_id
    expires, flags, packets = CT_VAL.unpack(value)
    assert (flags, packets) == (CT_F_REVERSED | CT_F_CANON, 1) and expires > 0
    [conn] = datapath.ct.entries(EP)
    assert (conn["direction"], conn["src"], conn["dst"], conn["sport"], conn["dport"]) == (
        "egress", "10.9.9.9", "10.1.2.3", 40000, 443)
    assert tr.run(datapath, "egress", tr.packet("10.9.9.9", "8.8.8.8", tr.UDP, 1, 53)) == tr.TC_ACT_SHOT
    metrics_keys = {k.hex() for k, _ in dump(bpf_root, "metrics")}
    # ep_id | dir | reason | pad: forwarded (0) and policy-denied (1) egress
    assert metrics_keys == {"07000000" "02" "00" "0000", "07000000" "02" "01" "0000"}
    assert datapath.metrics.entries() == [(EP, 2)]
    assert sorted(datapath.metrics.entries(with_reason=True)) == [(EP, 2, 0), (EP, 2, 1)]


@pytest.mark.parametrize("entry, why", [
    (("sideways", 1, 6, 80, 16, False), "direction"),
    (("ingress", -1, 6, 80, 16, False), "identity"),
    (("ingress", 1, 256, 80, 16, False), "proto"),
    (("ingress", 1, 6, 65536, 16, False), "port"),
    (("ingress", 1, 6, 80, 17, False), "port_plen"),
    (("ingress", 1, 6, 80, 16, 0), "deny must be True or False"),
    (("ingress", 1, 0, 80, 0, False), "any-protocol entry"),
    (("ingress", 1, 6, 8081, 13, False), "not the first port of a /13 block"),
    (("ingress", 1, 6, 80), "want \\(direction"),
])
def test_bad_entries_are_refused_before_anything_is_written(datapath, entry, why):
    with pytest.raises(ValueError, match=why):
        datapath.policy.update(EP, [("ingress", 1, 0, 0, 0, False), entry])
    assert datapath.policy.entries(EP) == []


def test_policy_update_keeps_hits_and_deletes(datapath):
    allow = ("egress", 0, 17, 53, 16, False)
    datapath.endpoints.set(1, EP, flags=FLAG_EGRESS_ENFORCED)
    datapath.policy.update(EP, [allow])
    for sport in (1000, 1001, 1002):
        assert tr.run(datapath, "egress", tr.packet("10.9.9.9", "8.8.8.8", tr.UDP, sport, 53)) == tr.TC_ACT_UNSPEC
    assert datapath.policy.entries(EP) == [(allow, 3)]
    datapath.policy.update(EP, [allow], [allow])  # in both: kept
    assert datapath.policy.entries(EP) == [(allow, 3)]
    datapath.policy.update(EP, [], [allow, ("egress", 0, 6, 53, 16, False)])  # a missing one: fine
    assert datapath.policy.entries(EP) == []
    assert datapath.policy.clear(EP) == 0


def test_remove_endpoint_clears_its_policy_and_connections_only(datapath):
    datapath.endpoints.set(1, EP)
    datapath.policy.update(EP, [("egress", 0, 0, 0, 0, False)])
    datapath.policy.update(EP + 1, [("ingress", 5, 0, 0, 0, False)])
    assert tr.run(datapath, "egress", tr.packet("10.9.9.9", "8.8.8.8", tr.UDP, 1, 53)) == tr.TC_ACT_UNSPEC
    assert len(datapath.ct.entries(EP)) == 1
    datapath.remove_endpoint(1, EP)
    assert datapath.policy.entries(EP) == [] and datapath.ct.entries() == []
    assert datapath.policy.entries(EP + 1) == [(("ingress", 5, 0, 0, 0, False), 0)]
    assert datapath.endpoints.entries() == {}
    assert [k for k in datapath.metrics.entries() if k[0] == EP] == []


def test_set_endpoint_checks_flags_and_identity(datapath):
    with pytest.raises(ValueError, match="flags"):
        datapath.endpoints.set(1, EP, flags=4)
    with pytest.raises(ValueError, match="identity"):
        datapath.endpoints.set(1, EP, identity=2**32)
    with pytest.raises(ValueError, match="invalid CIDR"):
        datapath.ipcache.set("10.0.0.1/8", 5)  # host bits set
    assert datapath.ipcache.delete("10.0.0.0/8") is False


@pytest.mark.parametrize("name, create", [
    ("policy", ("type", "lpm_trie", "key", "20", "value", "8", "entries", "16", "flags", "1")),
    ("ct", ("type", "lru_hash", "key", "40", "value", "24", "entries", "16")),
    ("ipcache", ("type", "hash", "key", "24", "value", "8", "entries", "16")),
])
def test_incompatible_pinned_policy_maps_are_refused(bpf_root, require_root, name, create):
    os.makedirs(f"{bpf_root}/maps")
    lab.sh("bpftool", "map", "create", f"{bpf_root}/maps/{name}", *create, "name", name)
    dp = Datapath(bpf_root)
    with pytest.raises(DatapathError, match=f"pinned map .*{name}"):
        dp.load()
    dp.close()


def test_maps_survive_a_reload_and_events_follow_it(make_datapath):
    first = make_datapath()
    first.ipcache.set("10.0.0.0/8", 300)
    first.policy.update(EP, [("ingress", 300, 6, 22, 16, True)])
    first.endpoints.set(1, EP, identity=4000)
    first.close()
    second = make_datapath()
    assert second.ipcache.entries() == {"10.0.0.0/8": 300}
    assert [e for e, _ in second.policy.entries(EP)] == [("ingress", 300, 6, 22, 16, True)]
    events = []
    second.open_events(events.append)
    second.load()  # new programs, new events map: the subscription moves along
    assert tr.run(second, "ingress", tr.packet("10.1.1.1", "10.9.9.9", tr.TCP, 5555, 22)) == tr.TC_ACT_SHOT
    assert second.poll_events(500) == 1
    [ev] = events
    assert (ev["reason"], ev["srcIdentity"], ev["dstIdentity"], ev["sport"], ev["dport"]) == (
        "policy-deny", 300, 4000, 5555, 22)
    # Entries written by the previous object are found and cleared.
    second.policy.update(EP + 1, [("egress", 1, 0, 0, 0, False)])
    second.remove_endpoint(1, EP)
    assert second.policy.entries(EP) == []
    assert second.policy.clear(EP + 1) == 1


def test_poll_needs_a_subscription_and_callback_errors_surface(datapath):
    with pytest.raises(DatapathError, match="open_events"):
        datapath.poll_events(0)

    def broken(event):
        raise RuntimeError("callback failed")

    datapath.open_events(broken)
    datapath.endpoints.set(1, EP, flags=FLAG_INGRESS_ENFORCED)
    assert tr.run(datapath, "ingress", tr.packet("10.1.1.1", "10.9.9.9", tr.UDP, 1, 2)) == tr.TC_ACT_SHOT
    with pytest.raises(RuntimeError, match="callback failed"):
        datapath.poll_events(500)
