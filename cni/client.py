"""The agent client: one HTTP/1.0 request per call over the agent's Unix socket.

Written by hand over `_socket` because `http.client` costs ~25 ms to import
(and `socket.py` ~2 ms for its enums), and the plugin runs once per pod
operation. The agent closes the connection
after each response, so a response is everything read until EOF; one that
ends before its head or its Content-Length is complete is the agent going
away mid-answer, which is worth retrying (code 11), not a bad answer.

It retries only the connection, and only while the agent is starting
(`cni.starting`) and `wait` seconds allow: the runtime retries CNI calls
itself, and DEL has its own fallback (`cni.attachment.record_pending_delete`).
"""

import _socket
import time

from cni import fastjson as json
from cni.attachment import DEFAULT_SOCKET, attachment_id
from cni.errors import AGENT_FAILURE, TRY_AGAIN_LATER, CniError
from cni.starting import agent_starting

# Between connection attempts to a starting agent: it listens ~1.5 s after
# binding, so a few dozen attempts at most.
RETRY_SECONDS = 0.05


class AgentUnreachable(CniError):
    """The agent's socket does not answer; ADD/CHECK report code 11.

    The kinds below differ only in their message: DEL records the deletion
    and STATUS reports not available for each of them alike."""

    def __init__(self, path, reason, msg=None):
        super().__init__(
            TRY_AGAIN_LATER,
            msg or "cilium-cni agent is not reachable at '%s': %s; start it with "
            "'systemctl start cilium-cni-agent' or 'cilium-cni agent --socket %s'"
            % (path, reason, path),
        )


class AgentTimeout(AgentUnreachable):
    """The agent accepted the request but did not answer in time (busy, or stuck)."""

    def __init__(self, path, seconds):
        super().__init__(path, None, "cilium-cni agent at '%s' did not answer within %.0f s; "
                         "it may be busy (see its log and 'cilium-cni status')" % (path, seconds))


class AgentHungUp(AgentUnreachable):
    """The connection ended before a whole response came: the agent stopped,
    crashed or restarted while answering. It may or may not have acted, and
    every request this plugin sends is safe to repeat."""

    def __init__(self, path):
        super().__init__(path, None, "cilium-cni agent at '%s' closed the connection before "
                         "it answered in full (it may have stopped or restarted); try again" % path)


class AgentStillStarting(AgentUnreachable):
    def __init__(self, path, seconds):
        super().__init__(path, None, "cilium-cni agent at '%s' is still starting after %g s "
                         "(netconf agent-wait-seconds); see its log" % (path, seconds))


class AgentClient:
    """`command` (the CNI verb) goes out as X-CNI-Command, so that the agent
    counts and times CNI operations by verb (its Prometheus metrics).
    `wait`: seconds to wait for an agent that is starting (0: fail at once)."""

    __slots__ = ("path", "timeout", "command", "wait")

    def __init__(self, path=DEFAULT_SOCKET, timeout=60.0, command=None, wait=0.0):
        self.path = path
        self.timeout = timeout
        self.command = command
        self.wait = wait

    def _connect(self, timeout):
        deadline = None
        marker_gone = False
        backlog_until = None
        while True:
            sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(self.path)
                return sock
            except BlockingIOError:
                # The agent's listen queue is full (a flood of connections):
                # a connect with a timeout is non-blocking, and a Unix socket
                # answers EAGAIN at once instead of waiting. Wait for room
                # within the call's timeout.
                sock.close()
                now = time.monotonic()
                if backlog_until is None:
                    backlog_until = now + (timeout or 5.0)
                if now >= backlog_until:
                    raise AgentUnreachable(self.path, "its listen queue stayed full") from None
                time.sleep(0.005)
                continue
            except FileNotFoundError:
                reason = "no such socket"
            except ConnectionRefusedError:
                reason = "connection refused"
            except PermissionError:
                sock.close()
                raise AgentUnreachable(self.path, "permission denied (run as root)") from None
            except OSError as exc:
                sock.close()
                raise AgentUnreachable(self.path, exc.strerror or str(exc)) from None
            sock.close()
            if not self.wait:
                raise AgentUnreachable(self.path, reason)
            now = time.monotonic()
            if deadline is None:
                deadline = now + self.wait
            if not agent_starting(self.path):
                # Down, or it has just started listening and dropped its
                # marker since this attempt: one more attempt tells which.
                if marker_gone:
                    raise AgentUnreachable(self.path, reason)
                marker_gone = True
                continue
            marker_gone = False
            if now >= deadline:
                raise AgentStillStarting(self.path, self.wait)
            time.sleep(min(RETRY_SECONDS, deadline - now))

    def request(self, method, url, body=None, timeout=None):
        """Return (status, decoded JSON body or None)."""
        payload = b"" if body is None else json.dumps(body).encode()
        head = (
            "%s %s HTTP/1.0\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            "%sContent-Length: %d\r\n\r\n" % (
                method, url, "X-CNI-Command: %s\r\n" % self.command if self.command else "",
                len(payload))
        ).encode()
        sock = self._connect(self.timeout if timeout is None else timeout)
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


def _content_length(head_lines):
    for line in head_lines:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            value = value.strip()
            return int(value) if value.isdigit() else None
    return None


def _parse_response(path, raw):
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        if not raw or raw.startswith(b"HTTP/"):
            raise AgentHungUp(path)  # nothing, or a head cut short
        raise CniError(AGENT_FAILURE, "malformed response from agent at '%s'" % path)
    lines = head.split(b"\r\n")
    length = _content_length(lines[1:])
    if length is not None and len(body) < length:
        raise AgentHungUp(path)
    status_line = lines[0].split()
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
