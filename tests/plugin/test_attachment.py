"""cni.attachment: the name `CONTAINERID:IFNAME` both ends use, its rules, and
the deletions the plugin records for the agent (written and read back)."""

import json
import logging
import os
import stat

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from agent.endpoints import split_key
from agent.errors import BadRequest
from agent.main import complete_pending_deletes
from cni.attachment import (
    DEFAULT_SOCKET,
    attachment_id,
    parse_attachment_id,
    pending_delete_dir,
    pending_delete_names,
    read_pending_delete,
    record_pending_delete,
    recorded_attachment,
)
from cni.env import parse_env
from cni.errors import CniError

pytestmark = pytest.mark.unit

CID = "3f4b1c2d9e8a7f6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("cid, ifname", [(CID, "eth0"), ("c1", "net1"), ("a_b.c-d", "x" * 15),
                                         ("9", "é" * 7)])
def test_the_id_round_trips(cid, ifname):
    assert attachment_id(cid, ifname) == "%s:%s" % (cid, ifname)
    assert parse_attachment_id(attachment_id(cid, ifname)) == (cid, ifname)


@pytest.mark.parametrize("key", [
    "nocolon", ":eth0", "c1:", "_c1:eth0", ".c1:eth0", "c/1:eth0", "c 1:eth0", "c1:eth0:x",
    "c1:eth/0", "c1:eth 0", "c1:eth\t0", "c1:.", "c1:..", "c1:" + "x" * 16, "c1:" + "é" * 8,
])
def test_anything_the_plugin_could_not_send_is_refused_by_name(key):
    with pytest.raises(ValueError) as err:
        parse_attachment_id(key)
    assert str(err.value) == "invalid endpoint key '%s': expected CONTAINERID:IFNAME" % key


def test_the_agent_answers_bad_request_for_an_invalid_key():
    assert split_key("c1:eth0") == ("c1", "eth0")
    with pytest.raises(BadRequest, match="invalid endpoint key 'bad!key'"):
        split_key("bad!key")


def _plugin_accepts(cid, ifname):
    env = {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": cid, "CNI_IFNAME": ifname,
           "CNI_PATH": "/opt/cni/bin"}
    try:
        parse_env(env)
    except CniError:
        return False
    return True


def _agent_accepts(cid, ifname):
    try:
        return split_key(attachment_id(cid, ifname)) == (cid, ifname)
    except BadRequest:
        return False


# Characters near every rule's edge: the id alphabet, separators, spaces, dots, non-ASCII.
_EDGE = st.text(alphabet="aZ09_.-:/ \t\né²", min_size=1, max_size=18)


@given(cid=_EDGE, ifname=_EDGE)
def test_the_plugin_and_the_agent_accept_the_same_attachments(cid, ifname):
    assert _plugin_accepts(cid, ifname) == _agent_accepts(cid, ifname)


def test_the_default_socket_is_the_shipped_agent_configs():
    with open(os.path.join(REPO, "conf", "agent.yaml")) as f:
        assert yaml.safe_load(f)["socket"] == DEFAULT_SOCKET


def test_a_recorded_deletion_is_read_back_by_the_agent(tmp_path):
    sock = str(tmp_path / "run" / "agent.sock")
    record = {"containerID": CID, "ifname": "eth0", "netns": "/var/run/netns/x", "network": "n"}
    path = record_pending_delete(sock, CID, "eth0", record)
    directory = pending_delete_dir(sock)
    assert directory == str(tmp_path / "run" / "pending-deletes")
    assert path == os.path.join(directory, CID + ":eth0.json")
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    assert json.loads(open(path).read()) == record
    # a repeated DEL rewrites the same record; no temporary file is left
    record_pending_delete(sock, CID, "eth0", dict(record, network="m"))
    assert os.listdir(directory) == [CID + ":eth0.json"]
    assert pending_delete_names(directory) == [CID + ":eth0.json"]
    assert read_pending_delete(path) == CID + ":eth0"
    assert recorded_attachment(CID + ":eth0.json") == CID + ":eth0"


def test_only_records_are_listed_and_a_missing_directory_has_none(tmp_path):
    assert pending_delete_names(str(tmp_path / "absent")) == []
    for name in ("b:eth0.json", "a:eth0.json", "a:eth1.json.bad", "c:eth0.json.tmp.42", "x"):
        (tmp_path / name).write_text("{}")
    assert pending_delete_names(str(tmp_path)) == ["a:eth0.json", "b:eth0.json"]


@pytest.mark.parametrize("text, why", [
    ("{not json", "Expecting property name"),
    (b"{\"containerID\": \"\xff\"}", "utf-8"),
    ("[1, 2]", "not a JSON object"),
    ('{"containerID": "c1"}', "must be strings"),
    ('{"containerID": 7, "ifname": "eth0"}', "must be strings"),
    ('{"containerID": "_c1", "ifname": "eth0"}', "invalid endpoint key '_c1:eth0'"),
])
def test_a_record_the_plugin_did_not_write_is_refused(tmp_path, text, why):
    path = tmp_path / "c1:eth0.json"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    with pytest.raises(ValueError, match=why):
        read_pending_delete(str(path))


def test_a_missing_record_is_an_os_error(tmp_path):
    with pytest.raises(OSError):
        read_pending_delete(str(tmp_path / "c1:eth0.json"))


class Endpoints:
    """The one method of the agent's endpoint manager the loop calls."""

    def __init__(self, known):
        self.known = set(known)
        self.deleted = []

    def delete(self, key):
        self.deleted.append(key)
        if key in self.known:
            self.known.discard(key)
            return True
        return False


def test_the_agent_completes_what_the_plugin_recorded(tmp_path):
    sock = str(tmp_path / "agent.sock")
    record_pending_delete(sock, "c1", "eth0", {"containerID": "c1", "ifname": "eth0"})
    record_pending_delete(sock, "c2", "eth0", {"containerID": "c2", "ifname": "eth0"})
    directory = pending_delete_dir(sock)
    with open(os.path.join(directory, "c3:eth0.json"), "w") as f:
        f.write("{torn")
    manager = Endpoints(["c1:eth0"])
    done = complete_pending_deletes(directory, manager, logging.getLogger("test-attachment"))
    assert done == 1  # c2 was unknown to the agent: deleted already, nothing to count
    assert manager.deleted == ["c1:eth0", "c2:eth0"]
    assert os.listdir(directory) == ["c3:eth0.json.bad"]

