"""A stand-in for the agent, for in-process tests of the plugin.

A hand-written HTTP/1.0 server on a Unix socket in a thread: it answers each
request from a table and keeps every request, so a test sees exactly what
the plugin sends and what it makes of each answer, including answers the
real agent would not give (cut short, garbled) and the agent's start-up
window (bound, not yet listening).
"""

import contextlib
import json
import shutil
import socket
import tempfile
import threading


@contextlib.contextmanager
def short_dir(prefix):
    """A temporary directory for sockets: a Unix socket path has at most 107
    bytes, and pytest's tmp_path can be longer."""
    path = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    try:
        yield path
    finally:
        shutil.rmtree(path)


class Request:
    __slots__ = ("method", "path", "headers", "body")

    def __init__(self, method, path, headers, body):
        self.method, self.path, self.headers, self.body = method, path, headers, body


class Raw(bytes):
    """A whole answer, head included, sent as it is before the connection closes."""


class FakeAgent:
    """Answers each request from `routes` ((METHOD, PATH) -> (status, body));
    anything else gets the agent's 404 error object. A bytes body is sent
    as it is (a `Raw` one without a head of ours), anything else as JSON.

    `listening=False`: bound but not listening, as the real agent is while
    it starts (connections are refused) until `listen()`."""

    def __init__(self, path, listening=True):
        self.socket = path
        self.routes = {}
        self.default = None  # (status, body) for what `routes` does not name, if set
        self.requests = []
        self._stop = threading.Event()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(path)
        self._thread = None
        if listening:
            self.listen()

    def listen(self):
        self._listener.listen(8)
        self._listener.settimeout(0.05)
        self._thread = threading.Thread(target=self._serve, name="fake-agent", daemon=True)
        self._thread.start()

    def _serve(self):
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5.0)
                self._answer(conn)

    def _answer(self, conn):
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        request_line, *header_lines = head.decode().split("\r\n")
        method, path, _ = request_line.split(" ")
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        while len(body) < int(headers.get("content-length", 0)):
            body += conn.recv(65536)
        self.requests.append(Request(method, path, headers, json.loads(body) if body else None))
        status, answer = self.routes.get((method, path), self.default or (404, {"error": {
            "code": 3, "message": "no endpoint '%s'" % path}}))
        if isinstance(answer, Raw):
            conn.sendall(answer)
            return
        raw = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
        conn.sendall(b"HTTP/1.0 %d Fake\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (status, len(raw), raw))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._listener.close()
