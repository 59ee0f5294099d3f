"""The chainer registry: one place, no duplicates, clear errors, schema in step;
every mode's endpoint request fits the agent's API document."""

import json
import os
import subprocess
import sys

import pytest

import chainers
from chainers import api
from cli.check import SCHEMA_PATH
from cni.client import endpoint_url
from cni.env import parse_env
from cni.errors import INVALID_NETWORK_CONFIG, CniError
from cni.netconf import parse_netconf

pytestmark = pytest.mark.unit


def test_generic_veth_is_registered():
    assert "generic-veth" in api.names()
    assert api.lookup("generic-veth").name == "generic-veth"


def test_duplicate_registration_is_refused():
    with pytest.raises(ValueError, match="registered twice"):
        api.register("generic-veth", object())


@pytest.mark.parametrize("mode, words", [(None, ["chaining-mode", "generic-veth"]),
                                         ("bogus", ["'bogus'", "generic-veth"])])
def test_lookup_errors_name_the_valid_modes(mode, words):
    with pytest.raises(CniError) as err:
        api.lookup(mode)
    assert err.value.code == INVALID_NETWORK_CONFIG
    for w in words:
        assert w in err.value.msg


def test_schema_lists_exactly_the_registered_modes():
    with open(SCHEMA_PATH) as f:
        schema = json.load(f)
    assert sorted(schema["properties"]["chaining-mode"]["enum"]) == api.names()


def test_importing_the_package_registers_every_chainer_module():
    # A fresh interpreter: other tests may have imported a module themselves.
    code = ("import json, pkgutil, chainers\n"
            "from chainers import api\n"
            "print(json.dumps([sorted(m.name for m in pkgutil.iter_modules(chainers.__path__)),"
            " sorted({type(api.lookup(n)).__module__ for n in api.names()})]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(chainers.__file__)), check=True)
    modules, registering = json.loads(out.stdout)
    assert registering == ["chainers." + m for m in modules if m != "api"]


PREV_RESULT = {"cniVersion": "1.0.0",
               "interfaces": [{"name": "veth1234", "mac": "aa:bb:cc:dd:ee:01"},
                              {"name": "eth0", "mac": "aa:bb:cc:dd:ee:02", "sandbox": "/x"}],
               "ips": [{"address": "10.22.0.5/16", "gateway": "10.22.0.1", "interface": 1}]}


def _context(mode):
    args = parse_env({"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "ctr-1", "CNI_IFNAME": "eth0",
                      "CNI_NETNS": "/var/run/netns/pod-1", "CNI_PATH": "/opt/cni/bin",
                      "CNI_ARGS": "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;"
                                  "K8S_POD_UID=u-1"})
    conf = parse_netconf(json.dumps({
        "cniVersion": "1.0.0", "name": "podnet", "type": "cilium-cni", "chaining-mode": mode,
        "args": {"cni": {"labels": [{"key": "app", "value": "web"}]}},
        "prevResult": PREV_RESULT}))
    return api.Context(args, conf, conf.prev_result, client=None, log=None,
                       chainer=api.lookup(mode))


@pytest.mark.parametrize("mode", api.names())
def test_every_mode_sends_an_endpoint_request_the_agent_accepts(mode):
    from agent.router import Router, load_document
    from agent.server import HANDLERS
    chainer = api.lookup(mode)
    ctx = _context(mode)
    request = chainer.endpoint_request(ctx)
    handler, req = Router(load_document(), HANDLERS).route(
        "PUT", endpoint_url("ctr-1", "eth0"), request)
    assert handler.__name__ == "put_endpoint" and req.params == {"key": "ctr-1:eth0"}
    assert request["prevResultAddresses"] == ["10.22.0.5/16"]
    assert request["k8s"] == {"namespace": "default", "podName": "web-0", "podUID": "u-1"}
    assert request["hostInterfaceHint"] == chainer.host_hint(ctx)
    assert "datapath" not in request  # nothing in the agent acts on one


class AnsweringClient:
    """Answers every request with one (status, body)."""

    def __init__(self, status, body):
        self.answer = (status, body)

    def request(self, method, url, body=None, timeout=None):
        return self.answer


class Log:
    def info(self, msg):
        pass


@pytest.mark.parametrize("status, body, recorded", [
    (200, {"deleted": "ctr-1:eth0"}, False),
    (404, {"error": {"code": 3, "message": "no endpoint 'ctr-1:eth0'"}}, False),
    (404, {"error": {"code": 101, "message": "no route for DELETE /v1/endpoints/ctr-1:eth0"}},
     True),
    (500, {"error": {"code": 100, "message": "datapath error"}}, True),
])
def test_del_takes_only_a_missing_endpoint_for_deleted(tmp_path, status, body, recorded):
    ctx = _context("generic-veth")
    conf = parse_netconf(json.dumps(dict(ctx.conf.raw, **{"agent-socket": str(tmp_path / "s")})))
    ctx = api.Context(ctx.args, conf, None, AnsweringClient(status, body), Log())
    api.lookup("generic-veth").delete(ctx)
    assert (tmp_path / "pending-deletes" / "ctr-1:eth0.json").exists() == recorded


def test_the_agent_api_accepts_exactly_the_registered_chaining_modes():
    # Regression: the agent took "chainingMode": "nope"; the API document
    # lists the modes, and this keeps the list in step with the registry.
    from agent.router import load_document
    schema = load_document()["components"]["schemas"]["EndpointRequest"]
    assert schema["properties"]["chainingMode"]["enum"] == api.names()
