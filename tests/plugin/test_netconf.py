import json

import pytest

from cni.errors import DECODING_FAILURE, INCOMPATIBLE_VERSION, INVALID_NETWORK_CONFIG, CniError
from cni.netconf import (
    DEFAULT_AGENT_SOCKET,
    DEFAULT_LOG_FILE,
    MAX_DEPTH,
    NetConf,
    decode,
    parse_netconf,
    reply_settings,
)

pytestmark = pytest.mark.unit

# What libcni hands the second plugin of a conflist (bridge, then us).
FULL = b"""{
  "cniVersion": "1.0.0",
  "name": "k8s-pod-network",
  "type": "cilium-cni",
  "chaining-mode": "generic-veth",
  "agent-socket": "/run/cilium-cni/agent.sock",
  "log-file": "/tmp/cilium-cni.log",
  "args": {"cni": {"labels": [{"key": "app", "value": "web"}]}},
  "runtimeConfig": {"portMappings": []},
  "cni.dev/valid-attachments": [
    {"containerID": "abc123", "ifname": "eth0", "extra": true},
    {"containerID": "def456", "ifname": "net1"}
  ],
  "prevResult": {
    "cniVersion": "1.0.0",
    "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/x"}],
    "ips": [{"address": "10.1.0.4/24", "interface": 0}]
  }
}"""

MINIMAL = b'{"cniVersion": "0.3.1", "name": "net", "type": "cilium-cni"}'


def fails(data, code, message):
    with pytest.raises(CniError) as exc:
        parse_netconf(data)
    assert exc.value.code == code
    assert message in exc.value.msg
    return exc.value


def with_fields(fields, base=MINIMAL):
    doc = json.loads(base)
    doc.update(fields)
    return json.dumps(doc).encode()


def with_field(key, value, base=MINIMAL):
    doc = json.loads(base)
    if value is KeyError:
        del doc[key]
    else:
        doc[key] = value
    return json.dumps(doc).encode()


def test_full():
    c = parse_netconf(FULL)
    assert isinstance(c, NetConf)
    assert (c.cni_version, c.name, c.type) == ("1.0.0", "k8s-pod-network", "cilium-cni")
    assert c.chaining_mode == "generic-veth"
    assert c.agent_socket == "/run/cilium-cni/agent.sock"
    assert c.log_file == "/tmp/cilium-cni.log"
    assert c.args == {"cni": {"labels": [{"key": "app", "value": "web"}]}}
    assert c.valid_attachments == [
        {"containerID": "abc123", "ifname": "eth0"},
        {"containerID": "def456", "ifname": "net1"},
    ]
    assert c.prev_result["ips"] == [{"address": "10.1.0.4/24", "interface": 0}]
    assert c.raw == json.loads(FULL)


def test_prev_result_not_converted():
    doc = json.loads(FULL)
    doc["prevResult"] = {"cniVersion": "0.3.0", "ips": [{"version": "4", "address": "10.1.0.4/24"}]}
    c = parse_netconf(json.dumps(doc).encode())
    assert c.prev_result == doc["prevResult"]


def test_minimal_defaults():
    c = parse_netconf(MINIMAL)
    assert c.chaining_mode is None
    assert c.agent_socket == DEFAULT_AGENT_SOCKET == "/var/run/cilium-cni/agent.sock"
    assert c.log_file == DEFAULT_LOG_FILE == "/var/log/cilium-cni.log"
    assert c.prev_result is None
    assert c.args == {} and c.runtime_config == {}
    assert c.valid_attachments is None
    assert c.agent_wait_seconds == 30


def test_accepts_str_and_surrounding_whitespace():
    assert parse_netconf("\n " + MINIMAL.decode() + "\n").name == "net"


def test_older_attachments_key():
    data = with_fields({"cni.dev/attachments": [{"containerID": "c1", "ifname": "eth0"}]})
    assert parse_netconf(data).valid_attachments == [{"containerID": "c1", "ifname": "eth0"}]


def test_valid_attachments_wins_over_older_key():
    data = with_fields({"cni.dev/attachments": [], "cni.dev/valid-attachments": [{"containerID": "c", "ifname": "e"}]})
    assert parse_netconf(data).valid_attachments == [{"containerID": "c", "ifname": "e"}]


def test_empty_attachments_is_empty_list_not_none():
    # GC with an empty list means "nothing is valid", unlike no list at all.
    assert parse_netconf(with_fields({"cni.dev/valid-attachments": []})).valid_attachments == []


@pytest.mark.parametrize(
    "attachments",
    [
        {"containerID": "c", "ifname": "e"},
        [["c", "e"]],
        [{"containerID": "c"}],
        [{"containerID": 1, "ifname": "e"}],
        [{"containerID": "c", "ifname": None}],
    ],
)
def test_bad_attachments(attachments):
    data = with_fields({"cni.dev/valid-attachments": attachments})
    fails(data, INVALID_NETWORK_CONFIG, "cni.dev/valid-attachments")


@pytest.mark.parametrize("data", [b"", b"   \n", ""])
def test_empty_stdin(data):
    err = fails(data, DECODING_FAILURE, "no network configuration on stdin")
    assert err.msg == "no network configuration on stdin"


def test_invalid_json_has_position():
    fails(b'{"cniVersion": "1.0.0",', DECODING_FAILURE, "line 1 column 24")


def test_invalid_utf8():
    fails(b'{"name": "\xff"}', DECODING_FAILURE, "not UTF-8 at byte 10")


def nested(levels):
    """An object `levels` objects deep."""
    return '{"a": ' * levels + "1" + "}" * levels


def test_nesting_up_to_the_limit():
    # the netconf object is the first level
    doc = with_fields({"args": json.loads(nested(MAX_DEPTH - 1))})
    assert parse_netconf(doc).args == json.loads(nested(MAX_DEPTH - 1))
    fails(with_fields({"args": json.loads(nested(MAX_DEPTH))}), DECODING_FAILURE,
          "nested deeper than 64 levels")


def test_nesting_too_deep_for_the_decoder():
    fails("[" * 100_000 + "]" * 100_000, DECODING_FAILURE, "nested deeper than 64 levels")


def test_reply_settings_of_a_netconf_that_fails_later():
    doc = decode(with_fields({"log-file": "/tmp/x.log", "log-max-size": -1}))
    assert reply_settings(doc) == ("0.3.1", "/tmp/x.log")
    fails(with_fields({"log-max-size": -1}), INVALID_NETWORK_CONFIG, "log-max-size")


@pytest.mark.parametrize("fields", [
    {"cniVersion": "0.2.0", "log-file": 7},
    {"cniVersion": ["1.0.0"], "log-file": ""},
    {"cniVersion": None, "log-file": None},
])
def test_reply_settings_take_only_what_is_usable(fields):
    assert reply_settings(decode(with_fields(fields))) == (None, None)


@pytest.mark.parametrize("value", [0, 0.5, 600])
def test_agent_wait_seconds(value):
    assert parse_netconf(with_field("agent-wait-seconds", value)).agent_wait_seconds == value


@pytest.mark.parametrize("value, message", [
    (-1, "from 0 (do not wait) to 600, found -1"),
    (601, "found 601"),
    ("5", "'agent-wait-seconds' must be a number, found string"),
    (True, "found boolean"),
])
def test_bad_agent_wait_seconds(value, message):
    fails(with_field("agent-wait-seconds", value), INVALID_NETWORK_CONFIG, message)


@pytest.mark.parametrize("data, found", [(b"[]", "array"), (b'"x"', "string"), (b"1", "number"), (b"null", "null")])
def test_not_an_object(data, found):
    fails(data, DECODING_FAILURE, "must be a JSON object, found " + found)


def test_missing_cni_version():
    fails(with_field("cniVersion", KeyError), INVALID_NETWORK_CONFIG, "no cniVersion")


def test_non_string_cni_version():
    fails(with_field("cniVersion", 1.0), INVALID_NETWORK_CONFIG, "'cniVersion' must be a string, found number")


def test_unsupported_cni_version():
    fails(with_field("cniVersion", "0.2.0"), INCOMPATIBLE_VERSION, "unsupported cniVersion '0.2.0'")


def test_garbage_cni_version():
    fails(with_field("cniVersion", "abc"), INVALID_NETWORK_CONFIG, "'abc'")


@pytest.mark.parametrize("value, message", [(KeyError, "no name"), ("", "no name"), (5, "'name' must be a string")])
def test_bad_name(value, message):
    fails(with_field("name", value), INVALID_NETWORK_CONFIG, message)


@pytest.mark.parametrize("value, message", [(KeyError, "no type"), (["x"], "'type' must be a string, found array")])
def test_bad_type(value, message):
    fails(with_field("type", value), INVALID_NETWORK_CONFIG, message)


@pytest.mark.parametrize(
    "key, value, found",
    [
        ("chaining-mode", 1, "number"),
        ("agent-socket", None, "null"),
        ("log-file", True, "boolean"),
        ("chaining-mode", {}, "object"),
    ],
)
def test_string_options(key, value, found):
    err = fails(with_field(key, value), INVALID_NETWORK_CONFIG, "'%s' must be a string" % key)
    assert err.msg.endswith("found " + found)


@pytest.mark.parametrize("key", ["agent-socket", "log-file"])
@pytest.mark.parametrize("value", ["", "/run/a\x00b", "/run/\ud800"])
def test_paths_the_kernel_cannot_take(key, value):
    fails(with_field(key, value), INVALID_NETWORK_CONFIG, "'%s' must be a file path" % key)


def test_a_path_that_was_not_utf8_is_still_a_path():
    assert parse_netconf(with_field("log-file", "/var/log/\udcff.log")).log_file == "/var/log/\udcff.log"


def test_agent_socket_longer_than_a_unix_socket_path():
    long_path = "/run/" + "s" * 103
    assert parse_netconf(with_field("agent-socket", long_path[:-1])).agent_socket == long_path[:-1]
    fails(with_field("agent-socket", long_path), INVALID_NETWORK_CONFIG, "longer than 107 bytes")


@pytest.mark.parametrize("key", ["prevResult", "args", "runtimeConfig"])
@pytest.mark.parametrize("value", [[], "x", 3])
def test_object_fields(key, value):
    fails(with_field(key, value), INVALID_NETWORK_CONFIG, "'%s' must be an object" % key)
