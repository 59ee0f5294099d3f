import itertools
import json

import pytest

from cni import result
from cni.errors import INCOMPATIBLE_VERSION, INVALID_NETWORK_CONFIG, CniError

pytestmark = pytest.mark.unit

VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")

# A bridge-plugin style result in the 0.x shape; "custom" is a key this
# plugin does not know and must carry through.
RESULT_0X = """{
  "cniVersion": "0.4.0",
  "interfaces": [
    {"name": "cni0", "mac": "0a:58:0a:f4:00:01"},
    {"name": "veth1a2b3c4d", "mac": "7e:21:4d:aa:bb:cc"},
    {"name": "eth0", "mac": "0a:58:0a:f4:00:05", "sandbox": "/var/run/netns/cni-1234"}
  ],
  "ips": [
    {"version": "4", "interface": 2, "address": "10.244.0.5/24", "gateway": "10.244.0.1"},
    {"version": "6", "interface": 2, "address": "fd00:10:244::5/64", "gateway": "fd00:10:244::1"},
    {"version": "4", "address": "192.168.7.9/32"}
  ],
  "routes": [
    {"dst": "0.0.0.0/0", "gw": "10.244.0.1"},
    {"dst": "::/0"}
  ],
  "dns": {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]},
  "custom": {"kept": [3, 2, 1]}
}"""

# The same result in the 1.x shape, with every 1.1-only field set.
RESULT_1X = """{
  "cniVersion": "1.1.0",
  "interfaces": [
    {"name": "cni0", "mac": "0a:58:0a:f4:00:01", "mtu": 1500},
    {"name": "veth1a2b3c4d", "mac": "7e:21:4d:aa:bb:cc", "mtu": 1500},
    {"name": "eth0", "mac": "0a:58:0a:f4:00:05", "sandbox": "/var/run/netns/cni-1234",
     "mtu": 1450, "socketPath": "/run/vhost/eth0.sock", "pciID": "0000:00:1f.6"}
  ],
  "ips": [
    {"interface": 2, "address": "10.244.0.5/24", "gateway": "10.244.0.1"},
    {"interface": 2, "address": "fd00:10:244::5/64", "gateway": "fd00:10:244::1"},
    {"address": "192.168.7.9/32"}
  ],
  "routes": [
    {"dst": "0.0.0.0/0", "gw": "10.244.0.1", "mtu": 1400, "advmss": 1360,
     "priority": 100, "table": 254, "scope": 0},
    {"dst": "::/0"}
  ],
  "dns": {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]},
  "custom": {"kept": [3, 2, 1]}
}"""

# Weave Net returns no interfaces at all, and no interface indices.
RESULT_WEAVE = """{
  "cniVersion": "0.3.0",
  "ips": [{"version": "4", "address": "10.32.0.4/12"}],
  "routes": [{"dst": "10.32.0.0/12"}],
  "dns": {}
}"""

ROUTE_1_1 = {"mtu", "advmss", "priority", "table", "scope"}
ITF_1_1 = {"mtu", "socketPath", "pciID"}


def source(v):
    doc = json.loads(RESULT_1X if v.startswith("1.") else RESULT_0X)
    doc["cniVersion"] = v
    if v == "1.0.0":
        for r in doc["routes"]:
            for k in ROUTE_1_1:
                r.pop(k, None)
        for i in doc["interfaces"]:
            for k in ITF_1_1:
                i.pop(k, None)
    return doc


@pytest.mark.parametrize("src, dst", list(itertools.product(VERSIONS, VERSIONS)))
def test_convert_all_pairs(src, dst):
    before = source(src)
    snapshot = json.dumps(before)
    out = result.convert(before, dst)

    assert json.dumps(before) == snapshot, "input mutated"
    assert out is not before and out["ips"] is not before["ips"]
    assert out["cniVersion"] == dst
    assert list(out) == list(before)  # top-level keys, in order
    assert result.addresses(out) == ["10.244.0.5/24", "fd00:10:244::5/64", "192.168.7.9/32"]
    assert [i["name"] for i in out["interfaces"]] == ["cni0", "veth1a2b3c4d", "eth0"]
    assert [i.get("interface") for i in out["ips"]] == [2, 2, None]
    assert [r["dst"] for r in out["routes"]] == ["0.0.0.0/0", "::/0"]
    assert out["dns"] == before["dns"] and out["custom"] == {"kept": [3, 2, 1]}

    if dst.startswith("0."):
        assert [ip["version"] for ip in out["ips"]] == ["4", "6", "4"]
    else:
        assert all("version" not in ip for ip in out["ips"])

    keeps_1_1 = src == "1.1.0" and dst == "1.1.0"
    assert bool(ROUTE_1_1 & set(out["routes"][0])) is keeps_1_1
    assert bool(ITF_1_1 & set(out["interfaces"][2])) is keeps_1_1
    json.dumps(out)  # still plain JSON


def test_round_trip_040_110_040_is_identity():
    original = json.loads(RESULT_0X)
    back = result.convert(result.convert(original, "1.1.0"), "0.4.0")
    assert back == original
    assert json.dumps(back) == json.dumps(original)  # key order too


def test_round_trip_100_040_100_is_identity():
    original = source("1.0.0")
    assert result.convert(result.convert(original, "0.4.0"), "1.0.0") == original


def test_downgrade_1_1_drops_only_1_1_fields():
    out = result.convert(json.loads(RESULT_1X), "1.0.0")
    assert out["routes"][0] == {"dst": "0.0.0.0/0", "gw": "10.244.0.1"}
    assert out["interfaces"][2] == {
        "name": "eth0",
        "mac": "0a:58:0a:f4:00:05",
        "sandbox": "/var/run/netns/cni-1234",
    }


def test_same_version_1_0_keeps_unknown_route_fields():
    doc = source("1.0.0")
    doc["routes"][0]["mtu"] = 1400  # a newer libcni may emit it; pass it on
    assert result.convert(doc, "1.0.0")["routes"][0]["mtu"] == 1400


def test_version_added_first_when_downgrading():
    out = result.convert(json.loads(RESULT_1X), "0.3.1")
    assert list(out["ips"][0]) == ["version", "interface", "address", "gateway"]


def test_existing_0x_version_field_is_kept():
    doc = json.loads(RESULT_0X)
    del doc["ips"][2]["version"]
    out = result.convert(doc, "0.3.0")
    assert out["ips"][0]["version"] == "4"
    assert out["ips"][2]["version"] == "4"  # filled in where missing


def test_weave_result_without_interfaces():
    doc = json.loads(RESULT_WEAVE)
    up = result.convert(doc, "1.1.0")
    assert "interfaces" not in up
    assert up["ips"] == [{"address": "10.32.0.4/12"}]
    assert result.convert(up, "0.3.0") == doc
    assert result.addresses_for_interface(up, "eth0") == ["10.32.0.4/12"]


def test_index_without_interfaces_is_not_checked():
    doc = {"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2/24", "interface": 3}]}
    assert result.convert(doc, "0.4.0")["ips"][0]["interface"] == 3


def test_minimal_result():
    assert result.convert({"cniVersion": "0.4.0"}, "1.1.0") == {"cniVersion": "1.1.0"}


@pytest.mark.parametrize("key", ["ips", "interfaces", "routes", "dns"])
@pytest.mark.parametrize("to", ["0.4.0", "1.1.0"])
def test_null_is_absent_and_passes_through(key, to):
    # libcni reads null as no value; the document goes on as it came
    doc = {"cniVersion": "1.0.0", key: None}
    assert result.convert(doc, to) == {"cniVersion": to, key: None}
    assert result.addresses_for_interface(doc, "eth0") == []


def test_addresses_for_interface():
    doc = json.loads(RESULT_0X)
    assert result.addresses_for_interface(doc, "eth0") == [
        "10.244.0.5/24",
        "fd00:10:244::5/64",
        "192.168.7.9/32",  # no interface index: the container's by convention
    ]
    assert result.addresses_for_interface(doc, "cni0") == ["192.168.7.9/32"]
    doc["ips"][0]["interface"] = 0
    assert result.addresses_for_interface(doc, "eth0") == ["fd00:10:244::5/64", "192.168.7.9/32"]


def test_addresses_empty():
    assert result.addresses({"cniVersion": "1.0.0"}) == []


def test_missing_cni_version():
    with pytest.raises(CniError) as exc:
        result.convert({"ips": []}, "1.0.0")
    assert exc.value.code == INVALID_NETWORK_CONFIG
    assert exc.value.msg == "prevResult has no cniVersion"


def test_unsupported_source_version():
    with pytest.raises(CniError) as exc:
        result.convert({"cniVersion": "0.2.0", "ip4": {"ip": "10.0.0.2/24"}}, "1.0.0")
    assert exc.value.code == INCOMPATIBLE_VERSION
    assert "prevResult" in exc.value.msg and "'0.2.0'" in exc.value.msg


def test_unsupported_target_version():
    with pytest.raises(CniError) as exc:
        result.convert({"cniVersion": "1.0.0"}, "2.0.0")
    assert exc.value.code == INCOMPATIBLE_VERSION


def _mutate(path, value):
    doc = json.loads(RESULT_0X)
    target = doc
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


@pytest.mark.parametrize(
    "doc, message",
    [
        ([1], "invalid prevResult: must be an object"),
        (_mutate(["ips", 1, "address"], "x"), "invalid prevResult: ips[1].address 'x' is not an address/prefix"),
        (_mutate(["ips", 0, "address"], "10.244.0.5"), "ips[0].address '10.244.0.5' is not an address/prefix"),
        (_mutate(["ips", 0, "address"], "10.0.0.5/255.255.255.0"), "is not an address/prefix"),
        (_mutate(["ips", 0, "address"], "10.0.0.5/33"), "is not an address/prefix"),
        (_mutate(["ips", 0, "address"], 5), "ips[0].address 5 is not an address/prefix"),
        (_mutate(["ips", 0, "address"], KeyError), "ips[0].address None"),
        (_mutate(["ips", 0, "gateway"], "10.244.0.1/24"), "ips[0].gateway '10.244.0.1/24' is not an IP address"),
        (_mutate(["ips", 0, "interface"], 3), "ips[0].interface 3 is out of range (3 interfaces)"),
        (_mutate(["ips", 0, "interface"], -1), "ips[0].interface -1 is not an index"),
        (_mutate(["ips", 0, "interface"], "2"), "ips[0].interface '2' is not an index"),
        (_mutate(["ips", 0, "interface"], True), "ips[0].interface True is not an index"),
        (_mutate(["ips", 2], "10.0.0.1/8"), "ips[2] must be an object"),
        (_mutate(["ips"], {}), "ips must be a list"),
        (_mutate(["interfaces", 1, "name"], 7), "interfaces[1].name must be a non-empty string"),
        (_mutate(["interfaces", 0], "cni0"), "interfaces[0] must be an object"),
        (_mutate(["interfaces"], "eth0"), "interfaces must be a list"),
        (_mutate(["routes", 1, "dst"], "default"), "routes[1].dst 'default' is not an address/prefix"),
        (_mutate(["routes", 0, "gw"], "gw"), "routes[0].gw 'gw' is not an IP address"),
        (_mutate(["dns"], ["10.96.0.10"]), "dns must be an object"),
    ],
)
def test_bad_shapes(doc, message):
    with pytest.raises(CniError) as exc:
        result.convert(doc, "1.0.0")
    assert exc.value.code == INVALID_NETWORK_CONFIG
    assert message in exc.value.msg


def test_bad_source_version_type():
    with pytest.raises(CniError) as exc:
        result.convert({"cniVersion": 1}, "1.0.0")
    assert exc.value.code == INVALID_NETWORK_CONFIG
    assert exc.value.msg.startswith("prevResult: ")
