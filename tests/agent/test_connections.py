"""The API server's connections, in-process on a real Unix socket (no root):
what clients that hold connections, send half a request, send too much or
go away can do to it, and what they cannot (see agent/connections.py).

Small limits keep these quick; tests/agent/test_agent_flood.py floods a real
agent with its real ones.
"""

import json
import logging
import resource
import socket
import threading
import time

import pytest

from agent.connections import Limits
from agent.operations import Operations
from agent.server import Api, UnixApiServer
from cni import errors as cni
from tests.agent.test_router import FakeManager, InlineWorker

pytestmark = pytest.mark.unit

REQUEST = b"GET /v1/healthz HTTP/1.0\r\n\r\n"
HALF = b"PUT /v1/endpoints/ctr-1:eth0 HTTP/1.0\r\nContent-Length: 100\r\n\r\n{\"contai"


class EndlessHub:
    """A monitor stream of heartbeats until the client goes."""

    def stream(self, kind, stopping):
        while True:
            yield None
            time.sleep(0.01)


def serve(tmp_path, limits, log=None):
    api = Api(FakeManager(), InlineWorker(), lambda: {"version": "test"}, hub=EndlessHub(),
              operations=Operations())
    srv = UnixApiServer(str(tmp_path / "agent.sock"), api, log or logging.getLogger("test"),
                        limits)
    srv.server_bind()
    srv.server_activate()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    return srv, thread


@pytest.fixture
def make_server(tmp_path):
    made = []

    def make(log=None, **limits):
        srv, thread = serve(tmp_path, Limits(**limits), log)
        made.append((srv, thread))
        return srv

    yield make
    for srv, thread in made:
        srv.shutdown()
        thread.join(5)
        srv.server_close()
        srv.remove_socket()


def connect(path, timeout=5.0):
    """A connection with a 5 s timeout. With a timeout Python connects a
    Unix socket non-blocking, and a full listen backlog answers EAGAIN at
    once (not a wait, as for a blocking connect): try again until it fits."""
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
            return sock
        except BlockingIOError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def answer(sock):
    """(status, decoded JSON body) of a whole answer; closes the socket."""
    chunks = []
    with sock:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 "), head
    return int(head.split()[1]), json.loads(body) if body else None


def ask(path, request=REQUEST):
    sock = connect(path)
    sock.sendall(request)
    return answer(sock)


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_half_requests_neither_block_others_nor_pile_up(make_server):
    # Regression: every held connection was a thread; 1,100 of them made the
    # plugin's ADD wait 60 s and fail.
    srv = make_server(max_connections=40)
    held = []
    try:
        for _ in range(100):
            held.append(connect(srv.socket_path))
            held[-1].sendall(HALF)
        started = time.monotonic()
        assert ask(srv.socket_path) == (200, {"status": "ok"})
        assert time.monotonic() - started < 2
        assert srv.loop.stats()["open"] <= 40
        # the oldest were closed first, each told why
        status, body = answer(held[0])
        assert status == 503 and body["error"]["code"] == cni.TRY_AGAIN_LATER
    finally:
        for sock in held:
            sock.close()
    wait_for(lambda: srv.loop.stats()["open"] == 0)


def test_a_request_not_complete_in_time_gets_408(make_server):
    srv = make_server(request_seconds=0.3)
    sock = connect(srv.socket_path)
    sock.sendall(HALF)
    started = time.monotonic()
    status, body = answer(sock)
    assert status == 408 and "not complete within" in body["error"]["message"]
    assert time.monotonic() - started < 2
    # the answer is written before the connection is closed: wait for the close
    wait_for(lambda: srv.loop.stats() == {"open": 0, "reading": 0, "bodyBytes": 0, "streams": 0})


@pytest.mark.parametrize("request_bytes, status, message", [
    (b"GET /" + b"a" * 70000, 414, "request line longer than"),
    (b"GET /v1/healthz HTTP/1.0\r\n" + b"X-A: b\r\n" * 10000, 431, "headers longer than"),
    (b"NOT A REQUEST\r\n\r\n", 400, "malformed request line 'NOT A REQUEST'"),
    (b"get /v1/healthz HTTP/1.0\r\n\r\n", 400, "malformed request line"),
    (b"GET /v1/healthz HTTP/1.0\r\nno colon\r\n\r\n", 400, "malformed header line 'no colon'"),
    (b"GET /v1/\xff\xfe HTTP/1.0\r\n\r\n", 404, "no route for GET"),
    (b"PUT /v1/endpoints/a:b HTTP/1.0\r\nContent-Length: 99999999999\r\n\r\n", 413,
     "request body too large (99999999999 bytes; the limit is"),
])
def test_every_error_is_the_json_error_body(make_server, request_bytes, status, message):
    # Regression: 414 and 400 came back as HTML pages.
    srv = make_server()
    got, body = ask(srv.socket_path, request_bytes)
    assert got == status and message in body["error"]["message"], body


def test_large_bodies_share_one_budget_and_give_it_back(make_server):
    # Regression: eight 60 MB bodies at once held 800 MB.
    srv = make_server(body_budget=3 << 20, small_body=1 << 20)
    big = b"PUT /v1/endpoints/a:eth0 HTTP/1.0\r\nContent-Length: %d\r\n\r\n" % (2 << 20)
    first = connect(srv.socket_path)
    first.sendall(big + b"[" * 1000)
    wait_for(lambda: srv.loop.stats()["bodyBytes"] == 2 << 20)
    status, body = ask(srv.socket_path, big)
    assert status == 503 and "would pass its" in body["error"]["message"]
    # a small body (the plugin's) is always read
    status, body = ask(srv.socket_path, b"POST /v1/gc HTTP/1.0\r\nX-CNI-Command: GC\r\n"
                       b"Content-Length: 31\r\n\r\n{\"network\": \"n\", \"valid\": []}  ")
    assert status == 200, body
    first.sendall(b" " * ((2 << 20) - 1000))
    status, body = answer(first)
    assert status == 400 and "not JSON" in body["error"]["message"]
    assert srv.loop.stats()["bodyBytes"] == 0


def test_streams_are_bounded_and_a_client_that_goes_is_one_debug_line(make_server, caplog):
    # Regression: each vanished client printed a BrokenPipeError traceback.
    srv = make_server(max_streams=2)
    monitor = b"GET /v1/monitor HTTP/1.0\r\n\r\n"
    streams = [connect(srv.socket_path) for _ in range(2)]
    for sock in streams:
        sock.sendall(monitor)
        assert sock.recv(4096).startswith(b"HTTP/1.0 200 OK")
    status, body = ask(srv.socket_path, monitor)
    assert status == 503 and "streams already" in body["error"]["message"]
    assert ask(srv.socket_path) == (200, {"status": "ok"})  # others are still served
    with caplog.at_level(logging.DEBUG, logger="test"):
        for sock in streams:
            sock.close()
        wait_for(lambda: srv.loop.stats()["streams"] == 0)
    gone = [r for r in caplog.records if "went away" in r.getMessage()]
    assert len(gone) == 2 and all(r.levelno == logging.DEBUG and not r.exc_info for r in gone)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_threads_stay_few_whatever_the_connections(make_server):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    srv = make_server()
    before = threading.active_count()
    held = [connect(srv.socket_path) for _ in range(min(300, soft // 3))]
    try:
        for sock in held:
            sock.sendall(HALF)
        wait_for(lambda: srv.loop.stats()["reading"] == len(held))
        assert threading.active_count() == before
    finally:
        for sock in held:
            sock.close()
    wait_for(lambda: srv.loop.stats()["open"] == 0)


def test_the_plugins_requests_have_their_own_threads(make_server):
    """Requests of other clients that block every thread of theirs do not
    hold up the plugin's."""
    srv = make_server(other_threads=2)
    release = threading.Event()
    srv.api.info = lambda: release.wait(10) and {"version": "test"}
    blocked = [connect(srv.socket_path) for _ in range(4)]
    try:
        for sock in blocked:
            sock.sendall(b"GET /v1/status HTTP/1.0\r\n\r\n")
        started = time.monotonic()
        status, _ = ask(srv.socket_path, b"GET /v1/endpoints/ctr-1:eth0 HTTP/1.0\r\n"
                        b"X-CNI-Command: CHECK\r\n\r\n")
        assert status == 200 and time.monotonic() - started < 2
    finally:
        release.set()
        for sock in blocked:
            assert answer(sock)[0] == 200


def test_nothing_of_a_large_request_stays_alive_after_its_answer(make_server):
    """Regression: a pool thread (and the reader) kept the last request's body
    and what was decoded from it until the next request came: 180 MB after a
    60 MB policy import, by tracemalloc."""
    import gc
    import tracemalloc
    srv = make_server()
    size = 8 << 20
    body = b'{"files": [{"source": "x.yaml", "text": "' + b"a" * size + b'"}]}'
    tracemalloc.start()
    try:
        status, _ = ask(srv.socket_path, b"POST /v1/gc HTTP/1.0\r\nContent-Length: %d\r\n\r\n"
                        % len(body) + body)
        assert status == 400  # the gc body is wrong; it was read and decoded all the same
        del body
        time.sleep(0.2)  # the pool thread drops the request after answering
        gc.collect()
        held = [s for s in tracemalloc.take_snapshot().statistics("lineno") if s.size >= size]
    finally:
        tracemalloc.stop()
    assert held == [], [str(s) for s in held]
