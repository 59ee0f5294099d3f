"""The agent's config: a malformed file is refused with the file, the key and the reason."""

import pytest

from agent.config import ConfigError, listen_address, load

pytestmark = pytest.mark.unit


def write(tmp_path, text, raw=False):
    path = tmp_path / "agent.yaml"
    if raw:
        path.write_bytes(text)
    else:
        path.write_text(text)
    return str(path)


def refused(path, *words):
    with pytest.raises(ConfigError) as err:
        load(path)
    msg = str(err.value)
    assert msg.startswith(path + ":"), msg
    for w in words:
        assert w in msg, msg
    return msg


def test_defaults_and_the_shipped_file_agree(tmp_path):
    import os
    shipped = os.path.join(os.path.dirname(__file__), "..", "..", "conf", "agent.yaml")
    assert load(shipped).as_dict() == load().as_dict()
    c = load()
    assert (c.log_format, c.metrics_address) == ("text", "127.0.0.1:9962")


def test_values_are_taken(tmp_path):
    c = load(write(tmp_path, "log-format: json\nmetrics-address: '[::1]:9100'\nqueue-size: 8\n"))
    assert (c.log_format, c.metrics_address, c.queue_size) == ("json", "[::1]:9100", 8)
    assert load(write(tmp_path, "metrics-address: ''\n")).metrics_address == ""


def test_unknown_key_names_the_key_and_a_close_match(tmp_path):
    msg = refused(write(tmp_path, "log-formt: json\n"), "unknown key 'log-formt'",
                  "did you mean 'log-format'?")
    assert "known:" not in msg
    refused(write(tmp_path, "colour: blue\n"), "unknown key 'colour'", "known: allow-localhost, bpf-root")


@pytest.mark.parametrize("text, words", [
    ("queue-size: many\n", ["key 'queue-size' must be a", "integer", "'many'"]),
    ("queue-size: true\n", ["key 'queue-size'", "True"]),
    ("socket: [a, b]\n", ["key 'socket' must be a string"]),
    ("log-format: xml\n", ["key 'log-format' must be one of text, json", "'xml'"]),
    ("log-level: loud\n", ["key 'log-level' must be one of"]),
    ("metrics-address: localhost:9962\n", ["key 'metrics-address' must be IP:PORT"]),
    ("metrics-address: '127.0.0.1'\n", ["key 'metrics-address'"]),
    ("metrics-address: 127.0.0.1:99999\n", ["key 'metrics-address' must end in a port"]),
    ("metrics-address: 9962\n", ["key 'metrics-address' must be a string"]),
    ("queue-size: 0\n", ["key 'queue-size' must be between 1 and 100000"]),
    ("identity-grace-seconds: -1\n", ["key 'identity-grace-seconds' must not be negative"]),
    ("state-dir: relative/dir\n", ["key 'state-dir' must be an absolute path"]),
    ("bpf-root: '/sys/fs/bpf/a b'\n", ["key 'bpf-root' must not contain"]),
])
def test_bad_values_name_key_and_reason(tmp_path, text, words):
    refused(write(tmp_path, text), *words)


def test_bad_yaml_names_the_line(tmp_path):
    refused(write(tmp_path, "socket: /run/a.sock\nlog-level: [info\nqueue-size: 3\n"),
            "line ", "invalid YAML")
    msg = refused(write(tmp_path, "socket: /x\n  bad: indent\n"), "invalid YAML")
    assert ": line 2:" in msg


def test_not_a_mapping_and_not_utf8(tmp_path):
    refused(write(tmp_path, "- a\n- b\n"), "must be a mapping")
    refused(write(tmp_path, b"socket: \xff\n", raw=True), "not UTF-8")


def test_unreadable_file(tmp_path):
    path = str(tmp_path / "missing.yaml")
    refused(path, "cannot read")


def test_command_line_overrides_are_checked_too():
    with pytest.raises(ConfigError) as err:
        load(None, {"metrics-address": "nope"})
    assert str(err.value).startswith("command line: key 'metrics-address'")


@pytest.mark.parametrize("text, want", [
    ("127.0.0.1:9962", ("127.0.0.1", 9962)), ("[::1]:0", ("::1", 0)),
    ("0.0.0.0:1", ("0.0.0.0", 1))])
def test_listen_address(text, want):
    assert listen_address(text) == want


def test_allow_localhost_takes_always_or_policy(tmp_path):
    f = tmp_path / "agent.yaml"
    f.write_text("allow-localhost: sometimes\n")
    refused(str(f), "allow-localhost", "always, policy", "'sometimes'")
    f.write_text("allow-localhost: policy\n")
    assert load(str(f)).allow_localhost == "policy"


def test_the_shipped_file_documents_every_key_as_declared():
    import os
    import re

    from agent.config import describe
    shipped = os.path.join(os.path.dirname(__file__), "..", "..", "conf", "agent.yaml")
    with open(shipped) as f:
        lines = dict(re.findall(r"^([a-z-]+): .*?# (.*)$", f.read(), re.M))
    assert lines == {key: doc for key, _, _, doc in describe()}


def test_validate_is_usable_on_its_own():
    from agent.config import validate
    validate({"queue-size": 8, "nodeport-devices": ["eth0"]}, "x.yaml")
    with pytest.raises(ConfigError, match="^x.yaml: key 'queue-size' must be an integer, not '8'$"):
        validate({"queue-size": "8"}, "x.yaml")
