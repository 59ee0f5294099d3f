"""Fuzzing the agent's API from its document with schemathesis, on a real agent.

Every operation of agent/api/openapi.yaml gets generated requests, valid
and invalid (schemathesis's examples, coverage and fuzzing phases), sent to
a throwaway agent (its own state dir, socket and bpf root; socket
load-balancing off, so nothing it is told reaches the host's traffic).
Each answer must be no 5xx, come within the request timeout (no hang), and
be declared: its status, content type and body (errors the one Error body);
a request the document rejects must be rejected; a method the document
does not list on a path must be 405 with `Allow`. Bounded for CI: a few
examples per operation, a deadline per request.

The agent listens on a Unix socket only: requests reach it through
`UnixAdapter`, a requests transport adapter that connects every request of
its session to that socket.
"""

import socket

import pytest
import requests
import schemathesis
import urllib3
from hypothesis import HealthCheck, settings
from requests.adapters import HTTPAdapter
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from agent.router import DOCUMENT_PATH
from tests import lab

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("require_root")]

BASE_URL = "http://agent"
TIMEOUT = 10.0  # seconds per request: longer is a hang
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, negative_data_rejection, unsupported_method]


class _UnixConnection(urllib3.connection.HTTPConnection):
    def __init__(self, *args, socket_path, **kwargs):
        super().__init__(*args, **kwargs)
        self.socket_path = socket_path

    def _new_conn(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if isinstance(self.timeout, (int, float)):
            sock.settimeout(self.timeout)
        sock.connect(self.socket_path)
        return sock


class _UnixPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _UnixConnection


class UnixAdapter(HTTPAdapter):
    """Sends every request of its session to one Unix socket."""

    def __init__(self, socket_path):
        super().__init__()
        self._pool = _UnixPool("localhost", socket_path=socket_path)

    def get_connection_with_tls_context(self, request, verify, proxies=None, cert=None):
        return self._pool

    def close(self):
        self._pool.close()
        super().close()


@pytest.fixture(scope="module")
def fuzzed_agent(tmp_path_factory, require_root):
    agent = lab.Agent(str(tmp_path_factory.mktemp("fuzzed-agent")))
    try:
        yield agent.start()
    finally:
        agent.cleanup()


@pytest.fixture(scope="module")
def session(fuzzed_agent):
    with requests.Session() as s:
        s.mount(BASE_URL + "/", UnixAdapter(fuzzed_agent.socket))
        yield s


def _schema():
    return schemathesis.openapi.from_path(DOCUMENT_PATH)


schema = _schema()


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_fuzzed_requests_get_declared_answers(case, session, fuzzed_agent):
    if case.operation.path == "/v1/monitor" and case.method.upper() == "GET":
        _monitor(case, session)
        return
    response = case.call(base_url=BASE_URL, session=session, timeout=TIMEOUT)
    case.validate_response(response, checks=CHECKS)


def _monitor(case, session):
    """The stream never ends: its head and first line, or its error."""
    kwargs = case.as_transport_kwargs(base_url=BASE_URL)
    with session.request(**kwargs, stream=True, timeout=TIMEOUT) as response:
        if response.status_code == 200:
            assert response.headers["Content-Type"] == "application/x-ndjson"
            # an event or a heartbeat comes within a second or so
            next(response.iter_lines(chunk_size=1))
            return
        response.content  # noqa: B018 (read it: an error body is short)
    case.validate_response(response, checks=CHECKS)
