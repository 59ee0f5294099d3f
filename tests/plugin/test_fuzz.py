"""Fuzzing the plugin's dispatcher `cni.plugin.main` in-process (hypothesis).

Each example is one CNI call: a CNI_* environment, a netconf and a
prevResult, each valid or mutated (values of the wrong type, deleted keys,
deep nesting, text that is not UTF-8, cut-off JSON), against a fake agent
that answers the way the real one does (a success, its error object) or
goes away mid-answer. Whatever the input, the plugin must answer the
spec's way: exit 0 with a result or nothing, or exit 1 with one CNI error
object whose code is never 999 (nothing here is the plugin's own fault),
in the netconf's cniVersion whenever the netconf names a supported one,
logged to the netconf's log-file; never a traceback, never a hang.

Bounded for CI: 2000 examples (~5 s), a deadline per example.
"""

import contextlib
import io
import json
import os

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from cni import version
from cni.plugin import INTERNAL_ERROR, main
from tests.fake_agent import FakeAgent, Raw, short_dir

pytestmark = pytest.mark.unit

COMMANDS = ("ADD", "CHECK", "DEL", "GC", "STATUS", "VERSION")  # hypothesis favours the first
PREV = {"cniVersion": "1.0.0",
        "interfaces": [{"name": "veth1"}, {"name": "eth0", "sandbox": "/var/run/netns/x"}],
        "ips": [{"address": "10.1.2.3/24", "gateway": "10.1.2.1", "interface": 1}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.2.1"}], "dns": {"nameservers": ["10.0.0.10"]}}


@pytest.fixture(scope="module")
def run_dir():
    with short_dir("ccni-fuzz-") as path:
        yield path


@pytest.fixture(scope="module")
def agent(run_dir):
    with FakeAgent(os.path.join(run_dir, "agent.sock")) as fake:
        yield fake


# --- what goes in ---

# Text as os.environ holds it: any code point, bytes that are not UTF-8 as
# lone surrogates (U+DC80-U+DCFF); no NUL, which no environment can hold.
env_text = st.text(st.characters(exclude_characters="\x00", codec=None), max_size=20) | \
    st.text(st.sampled_from("ab0-_.:/;= \udcff\udcc3\u00e9"), max_size=20)

json_leaf = st.none() | st.booleans() | st.integers(-2**70, 2**70) | \
    st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12) | \
    st.sampled_from(["", "1.0.0", "0.4.0", "10.1.2.3/24", "fd00::1/64", "10.1.2.1", "eth0", "x\udcff"])
json_value = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=3) |
                          st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)


def deep(levels):
    value = 1
    for _ in range(levels):
        value = [value]
    return value


# Where mutations land: every field the plugin reads but the two file names
# (see calls()), and anything else.
PATHS = [(key,) for key in ("cniVersion", "name", "type", "chaining-mode", "log-max-size",
                            "log-max-backups", "agent-wait-seconds", "args", "runtimeConfig",
                            "cni.dev/valid-attachments", "prevResult")] + [
    ("cni.dev/valid-attachments", 0), ("cni.dev/valid-attachments", 0, "ifname"),
    ("prevResult", "cniVersion"), ("prevResult", "interfaces"), ("prevResult", "interfaces", 0),
    ("prevResult", "interfaces", 1, "name"), ("prevResult", "ips"), ("prevResult", "ips", 0),
    ("prevResult", "ips", 0, "address"), ("prevResult", "ips", 0, "gateway"),
    ("prevResult", "ips", 0, "interface"), ("prevResult", "routes"),
    ("prevResult", "routes", 0, "dst"), ("prevResult", "routes", 0, "gw"), ("prevResult", "dns")]
any_path = st.lists(st.sampled_from(["prevResult", "ips", "interfaces", 0, 1, "address", "x"]),
                    min_size=1, max_size=4).map(tuple)
# The values that break code most often first, then anything JSON.
odd_value = st.none() | st.sampled_from([[], {}, "", 0, -1, True, 1e300, [{}], deep(70), deep(300)])
mutation = st.tuples(
    st.one_of(*[st.sampled_from(PATHS)] * 4, any_path),
    st.sampled_from(["set", "set", "delete"]),
    st.one_of(odd_value, odd_value, json_value),
)


def mutate(doc, path, action, value):
    """Apply one mutation where the path leads; a path that leads nowhere does nothing."""
    node = doc
    for key in path[:-1]:
        if isinstance(node, dict) and key in node or \
                isinstance(node, list) and isinstance(key, int) and key < len(node):
            node = node[key]
        else:
            return
    key = path[-1]
    if isinstance(node, dict) and not isinstance(key, int):
        if action == "delete":
            node.pop(key, None)
        else:
            node[key] = value
    elif isinstance(node, list) and isinstance(key, int) and key < len(node):
        if action == "delete":
            del node[key]
        else:
            node[key] = value


def rarely(n):
    """True about once in n draws; False is the simple case hypothesis starts from and shrinks to."""
    return st.sampled_from([False] * (n - 1) + [True])


@st.composite
def calls(draw):
    # Mostly a good environment, so that most calls get as far as the agent.
    command = draw(st.sampled_from(COMMANDS))
    if draw(rarely(10)):
        command = draw(st.sampled_from(["", "add", "FROB"]) | env_text)
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "c1", "CNI_NETNS": "/var/run/netns/x",
           "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin",
           "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-1"}
    bad_vars = st.lists(st.sampled_from(sorted(env)), min_size=1, max_size=3, unique=True)
    for var in draw(bad_vars) if draw(rarely(5)) else ():
        value = draw(st.none() | env_text)
        if value is None:
            del env[var]
        else:
            env[var] = value
    conf = {"cniVersion": draw(st.sampled_from(version.SUPPORTED)), "name": "net",
            "type": "cilium-cni", "chaining-mode": "generic-veth",
            "prevResult": json.loads(json.dumps(PREV)),
            "cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}]}
    if draw(st.booleans()):
        conf["prevResult"]["cniVersion"] = conf["cniVersion"]
    count = draw(st.sampled_from([0, 1, 1, 2, 3]))
    for path, action, value in draw(st.lists(mutation, min_size=count, max_size=count)):
        mutate(conf, path, action, value)
    # The two file names, from a short list: a random one could be anywhere
    # on this machine. AGENT, MISSING and LOG are filled in by the test.
    conf["agent-socket"] = draw(st.sampled_from(["AGENT", "MISSING", "", "/run/a\x00b", "/run/\ud800",
                                                 "/run/" + "s" * 103, 7, None]))
    conf["log-file"] = draw(st.sampled_from(["LOG", "", "/var/log/a\x00b", "/\ud800", [], None]))
    form = "json"
    if draw(rarely(5)):
        form = draw(st.sampled_from(["cut", "bytes", "garbage"]))
    return env, conf, form, draw(st.integers(0, 400)), draw(st.binary(max_size=30))


# What the agent says: the real agent's kinds of answers, or it goes away.
AGENT_ANSWERS = [
    (201, {"id": 7, "host": {"ifname": "veth1"}, "interface": {"addresses": ["10.1.2.3/24"]}}),
    (200, {"problems": []}),
    (200, {"problems": ["host veth 'veth1' is gone"]}),
    (200, {"removed": ["c0:eth0"], "status": "ok"}),
    (503, {"error": {"code": 11, "message": "restoring endpoints"}}),
    (400, {"error": {"code": 7, "message": "no interface 'eth0'", "details": "ENODEV"}}),
    (404, {"error": {"code": 3, "message": "no endpoint 'c1:eth0'"}}),
    (500, b"<html>oops</html>"),
    (None, Raw(b"")),
    (None, Raw(b"HTTP/1.0 201 Crea")),
    (None, Raw(b"HTTP/1.0 201 Created\r\nContent-Length: 40\r\n\r\n{\"id\": 1")),
]


def stdin_for(conf, form, cut, junk):
    text = json.dumps(conf)
    if form == "cut":
        return text[:cut]
    if form == "bytes":  # as the executable reads it; maybe not UTF-8
        return text.encode()[:cut] + junk + text.encode()[cut:]
    if form == "garbage":
        return junk
    return text


def expected_version(stdin):
    """The netconf's cniVersion if the stdin decodes to an object naming a supported one."""
    try:
        doc = json.loads(stdin)
    except (ValueError, RecursionError):
        return version.LATEST
    asked = doc.get("cniVersion") if isinstance(doc, dict) else None
    return asked if asked in version.SUPPORTED else version.LATEST


@settings(max_examples=2000, deadline=3000, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(call=calls(), answer=st.sampled_from(AGENT_ANSWERS))
def test_every_call_gets_the_spec_answer(run_dir, agent, call, answer):
    env, conf, form, cut, junk = call
    log_file = os.path.join(run_dir, "plugin.log")
    places = {"AGENT": agent.socket, "MISSING": os.path.join(run_dir, "missing.sock"),
              "LOG": log_file}
    for key in ("agent-socket", "log-file"):
        conf[key] = places.get(conf[key], conf[key]) if isinstance(conf[key], str) else conf[key]
    conf.setdefault("agent-wait-seconds", 1)
    agent.default = answer
    stdin = stdin_for(conf, form, cut, junk)
    if os.path.exists(log_file):
        os.unlink(log_file)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(env, io.BytesIO(stdin) if isinstance(stdin, bytes) else io.StringIO(stdin), out)
    assert err.getvalue() == ""
    text = out.getvalue()
    verb = env.get("CNI_COMMAND") if env.get("CNI_COMMAND") in COMMANDS else "other"
    event("%s: %s" % (verb, "exit 0" if rc == 0 else "code %s" % json.loads(text).get("code")))
    if rc == 0:
        if text:
            json.loads(text)  # a result, or the VERSION answer
        return
    assert rc == 1
    error = json.loads(text)
    assert set(error) <= {"cniVersion", "code", "msg", "details"}
    assert isinstance(error["code"], int) and error["code"] != INTERNAL_ERROR, error
    assert isinstance(error["msg"], str) and error["msg"], error
    assert error["cniVersion"] == expected_version(stdin), error
    if form == "json" and conf.get("log-file") == log_file:
        # the netconf was read: the error is in its log, not the default one
        with open(log_file) as f:
            assert " error code %d: " % error["code"] in f.read()
