"""The agent client: one HTTP/1.0 request per call over the agent's Unix socket.

Written by hand over `_socket` because `http.client` costs ~25 ms to import
(and `socket.py` ~2 ms for its enums), and the plugin runs once per pod
operation. The agent closes the connection
after each response, so a response is everything read until EOF.
It does not retry: the runtime retries CNI calls, and DEL has its own
fallback (`cni.attachment.record_pending_delete`).
"""

import _socket

from cni import fastjson as json
from cni.attachment import DEFAULT_SOCKET, attachment_id
from cni.errors import AGENT_FAILURE, TRY_AGAIN_LATER, CniError


class AgentUnreachable(CniError):
    """The agent's socket does not answer; ADD/CHECK report code 11."""

    def __init__(self, path, reason):
        super().__init__(
            TRY_AGAIN_LATER,
            "cilium-cni agent is not reachable at '%s': %s; start it with "
            "'systemctl start cilium-cni-agent' or 'cilium-cni agent --socket %s'"
            % (path, reason, path),
        )


class AgentTimeout(AgentUnreachable):
    """The agent accepted the request but did not answer in time (busy, or stuck).

    A kind of unreachable, so DEL still records the deletion and STATUS
    still reports not available; only the message differs.
    """

    def __init__(self, path, seconds):
        CniError.__init__(
            self,
            TRY_AGAIN_LATER,
            "cilium-cni agent at '%s' did not answer within %.0f s; it may be busy "
            "(see its log and 'cilium-cni status')" % (path, seconds))


class AgentClient:
    """`command` (the CNI verb) goes out as X-CNI-Command, so that the agent
    counts and times CNI operations by verb (its Prometheus metrics)."""

    __slots__ = ("path", "timeout", "command")

    def __init__(self, path=DEFAULT_SOCKET, timeout=60.0, command=None):
        self.path = path
        self.timeout = timeout
        self.command = command

    def request(self, method, url, body=None, timeout=None):
        """Return (status, decoded JSON body or None)."""
        payload = b"" if body is None else json.dumps(body).encode()
        head = (
            "%s %s HTTP/1.0\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            "%sContent-Length: %d\r\n\r\n" % (
                method, url, "X-CNI-Command: %s\r\n" % self.command if self.command else "",
                len(payload))
        ).encode()
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout if timeout is None else timeout)
            try:
                sock.connect(self.path)
            except FileNotFoundError:
                raise AgentUnreachable(self.path, "no such socket") from None
            except ConnectionRefusedError:
                raise AgentUnreachable(self.path, "connection refused") from None
            except PermissionError:
                raise AgentUnreachable(self.path, "permission denied (run as root)") from None
            except OSError as exc:
                raise AgentUnreachable(self.path, exc.strerror or str(exc)) from None
            try:
                sock.sendall(head + payload)
                chunks = []
                while True:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
            except TimeoutError:
                raise AgentTimeout(self.path, sock.gettimeout()) from None
            except OSError as exc:
                raise AgentUnreachable(self.path, exc.strerror or str(exc)) from None
        finally:
            sock.close()
        return _parse_response(self.path, b"".join(chunks))

    def call(self, method, url, body=None, ok=(200, 201), timeout=None):
        """Like request, but an unexpected status becomes the agent's CniError."""
        status, data = self.request(method, url, body, timeout)
        if status in ok:
            return status, data
        raise error_from_response(status, data)


def _parse_response(path, raw):
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        raise CniError(AGENT_FAILURE, "malformed response from agent at '%s'" % path)
    status_line = head.split(b"\r\n", 1)[0].split()
    try:
        status = int(status_line[1])
    except (IndexError, ValueError):
        raise CniError(AGENT_FAILURE, "malformed status line from agent at '%s'" % path) from None
    if not body:
        return status, None
    try:
        return status, json.loads(body)
    except ValueError:
        raise CniError(AGENT_FAILURE, "agent at '%s' answered %d with non-JSON body" % (path, status)) from None


def error_from_response(status, data):
    """The agent reports {"error": {"code": CNI code, "message": ...}}."""
    err = (data or {}).get("error") if isinstance(data, dict) else None
    if isinstance(err, dict) and isinstance(err.get("code"), int):
        return CniError(err["code"], str(err.get("message", "")), str(err.get("details", "")))
    return CniError(AGENT_FAILURE, "agent answered HTTP %d without an error object" % status)


def endpoint_url(container_id, ifname, suffix=""):
    # Both parts were validated by cni.env (cni.attachment's rules), so the
    # attachment id is safe in a URL path.
    return "/v1/endpoints/%s%s" % (attachment_id(container_id, ifname), suffix)
