"""The plugin's dispatcher `cni.plugin.main(environ, stdin, stdout)`, in-process.

As containernetworking's pkg/skel tests its dispatcher: the environment and
both streams are passed in, every verb and every bad input runs here without
root. Where a verb needs the agent, a tiny agent (tests/fake_agent.py)
answers on a temporary Unix socket and keeps every request, so the tests see
exactly what the plugin sends and what it makes of each answer. The same
calls against the built binary and a real agent are
tests/plugin/test_bad_input.py and tests/chaining/test_chain.py.
"""

import io
import json
import os
import socket
import threading
import time

import pytest

from cni import starting, version
from cni.attachment import pending_delete_dir, read_pending_delete
from cni.errors import (
    AGENT_FAILURE,
    DATAPATH_FAILURE,
    DECODING_FAILURE,
    INCOMPATIBLE_VERSION,
    INVALID_ENVIRONMENT,
    INVALID_NETWORK_CONFIG,
    IO_FAILURE,
    PLUGIN_NOT_AVAILABLE,
    TRY_AGAIN_LATER,
)
from cni.log import DEFAULT_LOG_FILE
from cni.plugin import INTERNAL_ERROR, main
from tests.fake_agent import FakeAgent, Raw, short_dir

pytestmark = pytest.mark.unit

# The prior plugin's result: only the pod's (eth0's) addresses reach the agent, not veth1's.
PREV = {"cniVersion": "1.0.0",
        "interfaces": [{"name": "veth1"}, {"name": "eth0", "sandbox": "/var/run/netns/x"}],
        "ips": [{"address": "10.1.2.3/24", "interface": 1},
                {"address": "fd00::1/64", "interface": 0}]}
POD_ARGS = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-1;K8S_POD_UID=u-1"


@pytest.fixture
def run_dir():
    with short_dir("ccni-dispatch-") as path:
        yield path


@pytest.fixture
def agent(run_dir):
    with FakeAgent(os.path.join(run_dir, "agent.sock")) as fake:
        yield fake


@pytest.fixture
def default_log():
    """Failures found before the netconf names a log file go to the default
    log; remove it afterwards if this test created it."""
    existed = os.path.exists(DEFAULT_LOG_FILE)
    yield DEFAULT_LOG_FILE
    if not existed:
        for path in (DEFAULT_LOG_FILE, DEFAULT_LOG_FILE + ".lock"):
            if os.path.exists(path):
                os.unlink(path)


def netconf(run_dir, cni_version="1.0.0", prev=PREV, **extra):
    conf = {"cniVersion": cni_version, "name": "net", "type": "cilium-cni",
            "chaining-mode": "generic-veth", "agent-socket": os.path.join(run_dir, "agent.sock"),
            "log-file": os.path.join(run_dir, "plugin.log")}
    if prev is not None:
        conf["prevResult"] = prev
    conf.update(extra)
    return json.dumps(conf)


def environ(command, **overrides):
    """A pod's CNI_* variables; an override of None leaves the variable out."""
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "c1", "CNI_NETNS": "/var/run/netns/x",
           "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin", "CNI_ARGS": POD_ARGS, **overrides}
    return {key: value for key, value in env.items() if value is not None}


def call(env, stdin):
    """(exit code, the JSON document written or None, the raw stdout)."""
    out = io.StringIO()
    rc = main(env, io.StringIO(stdin), out)
    text = out.getvalue()
    return rc, json.loads(text) if text else None, text


def fails(rc, answer, code, *words, cni_version=version.LATEST):
    assert rc == 1
    assert answer["code"] == code, answer
    assert answer["cniVersion"] == cni_version
    for word in words:
        assert word in answer["msg"], answer


# --- VERSION and inputs refused before any work ---

@pytest.mark.parametrize("stdin, answered", [
    ('{"cniVersion": "0.4.0"}', "0.4.0"),
    ("", version.LATEST),
    ("{not json", version.LATEST),
    ('{"cniVersion": 4}', version.LATEST),
    ("[]", version.LATEST),
])
def test_version_answers_whatever_the_stdin(stdin, answered):
    # VERSION needs nothing else from the environment, and ignores what it does not use
    rc, answer, _ = call({"CNI_COMMAND": "VERSION", "CNI_CONTAINERID": "not valid!"}, stdin)
    assert rc == 0
    assert answer == {"cniVersion": answered, "supportedVersions": list(version.SUPPORTED)}


def test_without_cni_command(run_dir):
    rc, answer, _ = call(environ(None), netconf(run_dir))
    fails(rc, answer, INVALID_ENVIRONMENT, "CNI_COMMAND is missing", cni_version="1.0.0")


@pytest.mark.parametrize("command, words", [
    ("FROB", ["unknown CNI_COMMAND 'FROB'"]),
    ("", ["CNI_COMMAND is empty"]),
    ("AD\udcff", ["unknown CNI_COMMAND 'AD\\xff'"]),
])
def test_an_unknown_command_lists_the_valid_ones(run_dir, command, words):
    rc, answer, _ = call(environ(command), netconf(run_dir))
    fails(rc, answer, INVALID_ENVIRONMENT, *words, "ADD, DEL, CHECK, VERSION, GC, STATUS",
          cni_version="1.0.0")


@pytest.mark.parametrize("command, variable", [
    ("ADD", "CNI_CONTAINERID"), ("ADD", "CNI_NETNS"), ("ADD", "CNI_IFNAME"), ("ADD", "CNI_PATH"),
    ("CHECK", "CNI_NETNS"), ("DEL", "CNI_IFNAME"), ("GC", "CNI_PATH"), ("STATUS", "CNI_PATH"),
])
def test_a_missing_variable_is_named(run_dir, command, variable):
    rc, answer, _ = call(environ(command, **{variable: None}), netconf(run_dir, "1.1.0"))
    fails(rc, answer, INVALID_ENVIRONMENT, variable)


@pytest.mark.parametrize("overrides, words", [
    ({"CNI_CONTAINERID": "-c1"}, ["container id '-c1'"]),
    ({"CNI_IFNAME": "eth0:1"}, ["interface name", "':'"]),
    ({"CNI_ARGS": "K8S_POD_NAME"}, ["CNI_ARGS", "K8S_POD_NAME"]),
    # os.environ keeps bytes that are not UTF-8 as lone surrogates
    ({"CNI_IFNAME": "eth\udcff"}, ["CNI_IFNAME 'eth\\xff' is not valid UTF-8"]),
    ({"CNI_NETNS": "/var/run/netns/\udcc3"}, ["CNI_NETNS '/var/run/netns/\\xc3'"]),
    ({"CNI_ARGS": "K8S_POD_NAME=w\udcff"}, ["CNI_ARGS", "not valid UTF-8"]),
])
def test_bad_environment_values_are_named(run_dir, overrides, words):
    rc, answer, _ = call(environ("ADD", **overrides), netconf(run_dir))
    fails(rc, answer, INVALID_ENVIRONMENT, *words, cni_version="1.0.0")


def test_an_environment_error_speaks_the_netconfs_version_and_logs_to_its_file(run_dir):
    # even when the netconf would fail too (no name): the environment is
    # reported first, in the version and to the log the netconf asked for
    conf = json.loads(netconf(run_dir, "0.4.0", prev=None))
    del conf["name"]
    rc, answer, _ = call(environ("ADD", CNI_IFNAME=None), json.dumps(conf))
    fails(rc, answer, INVALID_ENVIRONMENT, "CNI_IFNAME is missing", cni_version="0.4.0")
    rc, answer, _ = call(environ("ADD"), json.dumps(conf))
    fails(rc, answer, INVALID_NETWORK_CONFIG, "no name", cni_version="0.4.0")
    log = open(os.path.join(run_dir, "plugin.log")).read().splitlines()
    assert len(log) == 2
    assert " error code 4: required environment variable CNI_IFNAME is missing" in log[0]
    assert " error code 7: network configuration has no name" in log[1]
    assert "containerID=c1" in log[1]


@pytest.mark.parametrize("stdin, code, words", [
    ("", DECODING_FAILURE, ["no network configuration"]),
    ("{not json", DECODING_FAILURE, ["failed to decode", "line 1 column 2"]),
    ("[1, 2]", DECODING_FAILURE, ["JSON object", "array"]),
    ('{"name": "net", "type": "cilium-cni"}', INVALID_NETWORK_CONFIG, ["no cniVersion"]),
    ('{"cniVersion": "0.2.0", "name": "net", "type": "cilium-cni"}', INCOMPATIBLE_VERSION,
     ["'0.2.0'", "0.3.0, 0.3.1"]),
])
def test_a_netconf_that_does_not_parse(default_log, stdin, code, words):
    rc, answer, _ = call(environ("ADD"), stdin)
    fails(rc, answer, code, *words)


def test_an_agent_is_not_needed_to_refuse_bad_input(run_dir):
    # the netconf names the log from here on; the error object speaks its version
    rc, answer, _ = call(environ("ADD"), netconf(run_dir, "0.4.0", prev=None))
    fails(rc, answer, INVALID_NETWORK_CONFIG, "no prevResult", cni_version="0.4.0")
    rc, answer, _ = call(environ("ADD"), netconf(run_dir, **{"chaining-mode": "bogus"}))
    fails(rc, answer, INVALID_NETWORK_CONFIG, "'bogus'", "generic-veth", cni_version="1.0.0")
    rc, answer, _ = call(environ("CHECK"),
                         netconf(run_dir, "0.3.1", prev=dict(PREV, cniVersion="0.3.1")))
    fails(rc, answer, INCOMPATIBLE_VERSION, "CHECK needs cniVersion 0.4.0", cni_version="0.3.1")
    rc, answer, _ = call(environ("GC"), netconf(run_dir, **{"cni.dev/valid-attachments": []}))
    fails(rc, answer, INCOMPATIBLE_VERSION, "GC needs cniVersion 1.1.0", cni_version="1.0.0")
    rc, answer, _ = call(environ("GC"), netconf(run_dir, "1.1.0"))
    fails(rc, answer, INVALID_NETWORK_CONFIG, "cni.dev/valid-attachments", cni_version="1.1.0")
    log = open(os.path.join(run_dir, "plugin.log")).read()
    assert log.count(" error code ") == 5


# --- bad input is the spec's error, never code 999 ---

@pytest.mark.parametrize("prev, words", [
    (dict(PREV, interfaces="eth0"), ["interfaces must be a list"]),
    (dict(PREV, ips=[5]), ["ips[0] must be an object"]),
    (dict(PREV, ips=[{"address": 5}]), ["ips[0].address 5 is not an address/prefix"]),
    (dict(PREV, ips=[{"address": "10.1.2.3/24", "gateway": ["x"]}]), ["ips[0].gateway"]),
    (dict(PREV, ips=[{"address": "10.1.2.3/24", "interface": "1"}]), ["ips[0].interface '1'"]),
    (dict(PREV, routes={"dst": "0.0.0.0/0"}), ["routes must be a list"]),
    (dict(PREV, dns=[]), ["dns must be an object"]),
    (dict(PREV, cniVersion=1), ["cniVersion 1"]),
])
def test_a_prev_result_of_the_wrong_shape_is_named(run_dir, prev, words):
    rc, answer, _ = call(environ("ADD"), netconf(run_dir, prev=prev))
    fails(rc, answer, INVALID_NETWORK_CONFIG, *words, cni_version="1.0.0")


@pytest.mark.parametrize("key", ["log-file", "agent-socket"])
def test_a_file_name_no_file_can_have(run_dir, key):
    # refused, and the refusal itself does not trip over the name
    rc, answer, _ = call(environ("ADD"), netconf(run_dir, **{key: "/tmp/a\x00b"}))
    fails(rc, answer, INVALID_NETWORK_CONFIG, "'%s' must be a file path" % key,
          cni_version="1.0.0")


def nested(depth):
    return "[" * (depth - 1) + "]" * (depth - 1)


@pytest.mark.parametrize("where", ["prevResult", "args"])
def test_a_netconf_nested_too_deep_is_a_decoding_failure(run_dir, where):
    conf = netconf(run_dir).replace('"%s": {' % where, '"%s": {"deep": %s, ' % (where, nested(900)))
    if where == "args":
        conf = netconf(run_dir, args={"deep": 1}).replace('"deep": 1', '"deep": %s' % nested(900))
    rc, answer, _ = call(environ("ADD"), conf)
    fails(rc, answer, DECODING_FAILURE, "nested deeper than 64 levels", cni_version="1.0.0")


def test_stdin_too_deep_for_the_decoder(default_log):
    rc, answer, _ = call(environ("ADD"), nested(100_000))
    fails(rc, answer, DECODING_FAILURE, "nested deeper than 64 levels")
    rc, answer, _ = call(environ("VERSION"), nested(100_000))
    assert (rc, answer["cniVersion"]) == (0, version.LATEST)


def test_stdin_bytes_must_be_utf8(run_dir, default_log):
    out = io.StringIO()
    data = netconf(run_dir).replace('"net"', '"n\\u00e9t"').encode()
    assert main(environ("ADD"), io.BytesIO(data), out) == 1  # read as bytes: fine as UTF-8
    assert json.loads(out.getvalue())["code"] == TRY_AGAIN_LATER
    out = io.StringIO()
    bad = b'{"cniVersion": "1.0.0", "name": "n\xe9t"}'
    assert main(environ("ADD"), io.BytesIO(bad), out) == 1
    fails(1, json.loads(out.getvalue()), DECODING_FAILURE, "not UTF-8 at byte 34")


class BrokenStdin:
    def read(self):
        raise OSError(5, "Input/output error")


def test_stdin_that_cannot_be_read_is_an_io_failure(default_log):
    out = io.StringIO()
    assert main(environ("ADD"), BrokenStdin(), out) == 1
    fails(1, json.loads(out.getvalue()), IO_FAILURE, "stdin", "Input/output error")


# --- ADD ---

def test_add_registers_the_endpoint_and_passes_prev_result_through(run_dir, agent):
    agent.routes[("PUT", "/v1/endpoints/c1:eth0")] = (201, {
        "id": 7, "host": {"ifname": "veth1"}, "interface": {"addresses": ["10.1.2.3/24"]}})
    rc, answer, _ = call(environ("ADD"), netconf(run_dir, args={"cni": {"labels": ["app=web"]}}))
    assert (rc, answer) == (0, PREV)
    (req,) = agent.requests
    assert (req.method, req.path, req.headers["x-cni-command"]) == (
        "PUT", "/v1/endpoints/c1:eth0", "ADD")
    assert req.body == {
        "containerID": "c1", "ifname": "eth0", "netns": "/var/run/netns/x", "network": "net",
        "chainingMode": "generic-veth",
        "k8s": {"namespace": "shop", "podName": "web-1", "podUID": "u-1"},
        "prevResultAddresses": ["10.1.2.3/24"],
        "netconfArgs": {"cni": {"labels": ["app=web"]}},
        "hostInterfaceHint": None}
    assert "endpoint 7 ready: host veth veth1" in open(os.path.join(run_dir, "plugin.log")).read()


def test_add_answers_in_the_netconf_version(run_dir, agent):
    agent.routes[("PUT", "/v1/endpoints/c1:eth0")] = (201, {"id": 1})
    prev = {"cniVersion": "0.4.0", "interfaces": [{"name": "eth0", "sandbox": "/x"}],
            "ips": [{"version": "4", "address": "10.1.2.3/24", "interface": 0}]}
    rc, answer, _ = call(environ("ADD"), netconf(run_dir, "1.1.0", prev=prev))
    assert rc == 0
    assert answer == {"cniVersion": "1.1.0", "interfaces": prev["interfaces"],
                      "ips": [{"address": "10.1.2.3/24", "interface": 0}]}


@pytest.mark.parametrize("listening_file", [False, True])
def test_add_without_an_agent_is_try_again_later(run_dir, listening_file):
    sock = os.path.join(run_dir, "agent.sock")
    if listening_file:  # a socket file left behind by a stopped agent: connection refused
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(sock)
        s.close()
    rc, answer, _ = call(environ("ADD"), netconf(run_dir))
    fails(rc, answer, TRY_AGAIN_LATER, "not reachable at '%s'" % sock,
          "connection refused" if listening_file else "no such socket", cni_version="1.0.0")


def test_add_passes_the_agents_error_through(run_dir, agent):
    agent.routes[("PUT", "/v1/endpoints/c1:eth0")] = (400, {"error": {
        "code": INVALID_NETWORK_CONFIG, "message": "no interface 'eth0' in '/var/run/netns/x'",
        "details": "ENODEV"}})
    rc, answer, _ = call(environ("ADD"), netconf(run_dir))
    fails(rc, answer, INVALID_NETWORK_CONFIG, "no interface 'eth0'", cni_version="1.0.0")
    assert answer["details"] == "ENODEV"


@pytest.mark.parametrize("status, body, words", [
    (500, b"<html>oops</html>", ["answered 500 with non-JSON body"]),
    (502, {"unexpected": True}, ["HTTP 502 without an error object"]),
    (200, b"", ["HTTP 200 without"]),
])
def test_add_names_an_agent_answer_it_cannot_use(run_dir, agent, status, body, words):
    agent.routes[("PUT", "/v1/endpoints/c1:eth0")] = (status, body)
    rc, answer, _ = call(environ("ADD"), netconf(run_dir))
    if status == 200:  # 200 is a success status: an empty body is the chainer's problem
        fails(rc, answer, INTERNAL_ERROR, "internal error", cni_version="1.0.0")
        assert answer["details"] == "see the plugin log"
        assert "internal error: Traceback" in open(os.path.join(run_dir, "plugin.log")).read()
    else:
        fails(rc, answer, AGENT_FAILURE, *words, cni_version="1.0.0")


def test_add_takes_null_ips_as_none_like_libcni(run_dir, agent):
    agent.routes[("PUT", "/v1/endpoints/c1:eth0")] = (201, {"id": 1})
    prev = dict(PREV, ips=None)
    rc, answer, _ = call(environ("ADD"), netconf(run_dir, "1.1.0", prev=prev))
    assert (rc, answer) == (0, dict(prev, cniVersion="1.1.0"))
    assert agent.requests[0].body["prevResultAddresses"] == []


HUNG_UP = [
    Raw(b""),                                   # closed without a word
    Raw(b"HTTP/1.0 201 Crea"),                  # in the middle of the head
    Raw(b"HTTP/1.0 201 Created\r\nContent-Length: 40\r\n\r\n{\"id\": 1"),  # short body
]


@pytest.mark.parametrize("answer", HUNG_UP)
def test_add_to_an_agent_that_hangs_up_is_try_again_later(run_dir, agent, answer):
    agent.routes[("PUT", "/v1/endpoints/c1:eth0")] = (None, answer)
    rc, out, _ = call(environ("ADD"), netconf(run_dir))
    fails(rc, out, TRY_AGAIN_LATER, "agent at '%s' closed the connection" % agent.socket,
          cni_version="1.0.0")


def test_add_names_a_garbled_answer(run_dir, agent):
    agent.routes[("PUT", "/v1/endpoints/c1:eth0")] = (None, Raw(b"SSH-2.0-OpenSSH\r\n"))
    rc, out, _ = call(environ("ADD"), netconf(run_dir))
    fails(rc, out, AGENT_FAILURE, "malformed response", cni_version="1.0.0")


# --- waiting for an agent that is starting ---

@pytest.fixture
def starting_agent(run_dir):
    """An agent as it starts: socket bound but not listening, marker held;
    `ready_after(seconds)` makes it listen and drop the marker then."""
    path = os.path.join(run_dir, "agent.sock")
    fake = FakeAgent(path, listening=False)
    marker = starting.hold(path)
    timers = []

    def ready():
        fake.listen()
        starting.release(path, marker)

    def ready_after(seconds):
        timer = threading.Timer(seconds, ready)
        timers.append(timer)
        timer.start()

    fake.ready_after = ready_after
    try:
        yield fake
    finally:
        for timer in timers:
            timer.cancel()
            timer.join()
        if not fake._thread:
            starting.release(path, marker)
        fake.close()


def timed_call(env, stdin):
    t0 = time.monotonic()
    rc, answer, text = call(env, stdin)
    return rc, answer, time.monotonic() - t0


def test_add_waits_for_a_starting_agent(run_dir, starting_agent):
    starting_agent.routes[("PUT", "/v1/endpoints/c1:eth0")] = (201, {"id": 1})
    starting_agent.ready_after(0.5)
    rc, answer, took = timed_call(environ("ADD"), netconf(run_dir))
    assert (rc, answer) == (0, PREV)
    assert 0.4 < took < 5


def test_add_waits_no_longer_than_agent_wait_seconds(run_dir, starting_agent):
    rc, answer, took = timed_call(environ("ADD"), netconf(run_dir, **{"agent-wait-seconds": 0.3}))
    fails(rc, answer, TRY_AGAIN_LATER, "still starting after 0.3 s", "agent-wait-seconds",
          cni_version="1.0.0")
    assert 0.25 < took < 3


@pytest.mark.parametrize("command, wait", [("ADD", 0), ("STATUS", 30), ("DEL", 30)])
def test_what_does_not_wait_for_a_starting_agent(run_dir, starting_agent, command, wait):
    # agent-wait-seconds 0 turns waiting off; STATUS says how things are now;
    # DEL records the deletion at once for the agent to complete when it is up
    rc, answer, took = timed_call(environ(command), netconf(
        run_dir, "1.1.0", **{"agent-wait-seconds": wait}))
    assert took < 0.5
    if command == "DEL":
        assert (rc, answer) == (0, None)
        assert os.listdir(pending_delete_dir(starting_agent.socket)) == ["c1:eth0.json"]
    else:
        fails(rc, answer, TRY_AGAIN_LATER if command == "ADD" else PLUGIN_NOT_AVAILABLE,
              "connection refused", cni_version="1.1.0")


def test_a_marker_left_by_an_agent_that_died_is_not_waited_for(run_dir):
    path = os.path.join(run_dir, "agent.sock")
    fake = FakeAgent(path, listening=False)  # a socket nobody will listen on
    try:
        with open(starting.marker_path(path), "w") as f:
            f.write("12345\n")  # nobody holds its lock
        rc, answer, took = timed_call(environ("ADD"), netconf(run_dir))
    finally:
        fake.close()
    fails(rc, answer, TRY_AGAIN_LATER, "connection refused", cni_version="1.0.0")
    assert took < 0.5


# --- CHECK ---

def test_check_sends_the_addresses_and_is_silent_when_all_is_well(run_dir, agent):
    agent.routes[("POST", "/v1/endpoints/c1:eth0/check")] = (200, {"problems": []})
    rc, answer, text = call(environ("CHECK"), netconf(run_dir))
    assert (rc, text) == (0, "")
    (req,) = agent.requests
    assert req.body == {"addresses": ["10.1.2.3/24"]}
    assert req.headers["x-cni-command"] == "CHECK"


def test_check_reports_every_problem(run_dir, agent):
    agent.routes[("POST", "/v1/endpoints/c1:eth0/check")] = (200, {
        "problems": ["host veth 'veth1' is gone", "to_container is not attached"]})
    rc, answer, _ = call(environ("CHECK"), netconf(run_dir))
    fails(rc, answer, DATAPATH_FAILURE, "veth1' is gone; to_container", cni_version="1.0.0")
    assert answer["details"] == "host veth 'veth1' is gone\nto_container is not attached"


def test_check_without_an_agent_is_try_again_later(run_dir):
    rc, answer, _ = call(environ("CHECK"), netconf(run_dir))
    fails(rc, answer, TRY_AGAIN_LATER, "not reachable", cni_version="1.0.0")


# --- DEL ---

@pytest.mark.parametrize("status", [200, 404])
def test_del_deletes_and_an_unknown_endpoint_is_already_deleted(run_dir, agent, status):
    agent.routes[("DELETE", "/v1/endpoints/c1:eth0")] = (status, {} if status == 200 else {
        "error": {"code": 3, "message": "no endpoint"}})
    rc, answer, text = call(environ("DEL"), netconf(run_dir))
    assert (rc, text) == (0, "")
    (req,) = agent.requests
    assert (req.method, req.path, req.headers["x-cni-command"]) == (
        "DELETE", "/v1/endpoints/c1:eth0", "DEL")
    assert not os.path.exists(pending_delete_dir(agent.socket))


def test_del_needs_no_netns_no_prev_result_and_no_known_mode(run_dir, agent):
    # DEL must not block a pod's deletion on what ADD already reported
    agent.routes[("DELETE", "/v1/endpoints/c1:eth0")] = (200, {})
    conf = netconf(run_dir, prev={"cniVersion": "1.0.0", "ips": [{"address": "nonsense"}]},
                   **{"chaining-mode": "bogus"})
    rc, answer, text = call(environ("DEL", CNI_NETNS=None), conf)
    assert (rc, text) == (0, "")
    assert [r.path for r in agent.requests] == ["/v1/endpoints/c1:eth0"]
    log = open(os.path.join(run_dir, "plugin.log")).read()
    assert "ignoring unreadable prevResult on DEL" in log
    assert "DEL with chaining mode 'bogus': deleting as generic-veth" in log


def test_del_with_the_agent_down_records_the_deletion(run_dir):
    sock = os.path.join(run_dir, "agent.sock")
    rc, answer, text = call(environ("DEL"), netconf(run_dir))
    assert (rc, text) == (0, "")
    record = os.path.join(pending_delete_dir(sock), "c1:eth0.json")
    assert json.loads(open(record).read()) == {
        "containerID": "c1", "ifname": "eth0", "netns": "/var/run/netns/x", "network": "net"}
    assert read_pending_delete(record) == "c1:eth0"  # what the agent will read on start
    assert "deletion recorded at %s" % record in open(os.path.join(run_dir, "plugin.log")).read()


def test_del_refused_by_the_agent_is_recorded_too(run_dir, agent):
    agent.routes[("DELETE", "/v1/endpoints/c1:eth0")] = (503, {"error": {
        "code": TRY_AGAIN_LATER, "message": "restoring endpoints"}})
    rc, answer, text = call(environ("DEL"), netconf(run_dir))
    assert (rc, text) == (0, "")
    assert os.listdir(pending_delete_dir(agent.socket)) == ["c1:eth0.json"]
    assert "(agent answered HTTP 503)" in open(os.path.join(run_dir, "plugin.log")).read()


@pytest.mark.parametrize("answer", HUNG_UP + [Raw(b"SSH-2.0-OpenSSH\r\n"),
                                              Raw(b"HTTP/1.0 500 Oops\r\n\r\n<html>")])
def test_del_to_an_agent_that_hangs_up_or_talks_nonsense_is_recorded(run_dir, agent, answer):
    agent.routes[("DELETE", "/v1/endpoints/c1:eth0")] = (None, answer)
    rc, out, text = call(environ("DEL"), netconf(run_dir))
    assert (rc, text) == (0, "")
    assert os.listdir(pending_delete_dir(agent.socket)) == ["c1:eth0.json"]


# --- GC and STATUS ---

def test_gc_sends_the_valid_attachments(run_dir, agent):
    agent.routes[("POST", "/v1/gc")] = (200, {"removed": ["c0:eth0"]})
    valid = [{"containerID": "c1", "ifname": "eth0"}, {"containerID": "c2", "ifname": "net1"}]
    rc, answer, text = call(environ("GC", CNI_CONTAINERID=None, CNI_NETNS=None, CNI_IFNAME=None),
                            netconf(run_dir, "1.1.0", **{"cni.dev/valid-attachments": valid}))
    assert (rc, text) == (0, "")
    (req,) = agent.requests
    assert (req.method, req.path, req.body) == ("POST", "/v1/gc", {"network": "net", "valid": valid})
    assert "gc removed 1 endpoint(s)" in open(os.path.join(run_dir, "plugin.log")).read()


def test_status_is_the_agents_health(run_dir, agent):
    agent.routes[("GET", "/v1/healthz")] = (200, {"status": "ok"})
    rc, answer, text = call(environ("STATUS"), netconf(run_dir, "1.1.0", prev=None))
    assert (rc, text) == (0, "")
    assert agent.requests[0].headers["x-cni-command"] == "STATUS"
    agent.routes[("GET", "/v1/healthz")] = (503, {"status": "restoring endpoints"})
    rc, answer, _ = call(environ("STATUS"), netconf(run_dir, "1.1.0", prev=None))
    fails(rc, answer, PLUGIN_NOT_AVAILABLE, "not ready: restoring endpoints", cni_version="1.1.0")


def test_status_without_an_agent_is_not_available(run_dir):
    rc, answer, _ = call(environ("STATUS"), netconf(run_dir, "1.1.0", prev=None))
    fails(rc, answer, PLUGIN_NOT_AVAILABLE, "not reachable", cni_version="1.1.0")
