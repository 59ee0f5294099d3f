"""The API socket's connections: one loop thread reads requests, a few threads answer.

A thread per connection let 1,100 clients that sent half a request each
hold every descriptor and a thread apiece, and the plugin's ADD waited 60 s.
Here one selector thread accepts and reads every connection without
blocking, within limits that hold whatever clients do:

- a deadline for a complete request (`Limits.request_seconds`), then 408;
- at most `max_connections` open: beyond it the oldest connection still
  sending its request is closed first (503), so a new one always gets in;
- a body of at most `max_body` bytes (413), and all bodies being held at
  most `body_budget` bytes in total: a large body over it gets 503, a small
  one (the plugin's) is always read;
- the request line and headers at most `max_head` bytes (414, 431).

Only complete requests reach `answer(exchange)`, on one of two small pools
of threads: requests of the CNI plugin (they carry X-CNI-Command) have
their own, so that other clients cannot starve them. A streaming answer
takes a thread of its own (at most `max_streams`). Every error goes out as
the API's JSON error body; a client that went away is one debug line.
"""

import email.utils
import errno
import http
import json
import queue
import selectors
import socket
import threading
import time

from agent.errors import AgentError, BadRequest, Busy, HeadersTooLarge, PayloadTooLarge, RequestTimeout, UriTooLong
from agent.logs import escaped

SERVER = "cilium-cni-agent"


class Limits:
    """What one agent lets its clients hold (see the module docstring)."""

    def __init__(self, request_seconds=10.0, max_connections=512, max_body=64 << 20,
                 body_budget=160 << 20, small_body=64 << 10, max_head=64 << 10,
                 cni_threads=16, other_threads=8, max_streams=32, write_seconds=30.0):
        self.request_seconds = request_seconds
        self.max_connections = max_connections
        self.max_body = max_body
        self.body_budget = body_budget
        # always admitted (the plugin sends ~1 KB); max_connections bound them
        self.small_body = small_body
        self.max_head = max_head
        self.cni_threads = cni_threads
        self.other_threads = other_threads
        self.max_streams = max_streams
        self.write_seconds = write_seconds


class Exchange:
    """One complete request and the means to answer it (on a pool thread)."""

    __slots__ = ("method", "target", "version", "headers", "body", "_sock", "_loop", "_size",
                 "_closed")

    def __init__(self, loop, sock, method, target, version, headers, body, size):
        self.method, self.target, self.version = method, target, version
        self.headers = headers  # lower-case name -> value
        self.body = body        # bytearray, or None
        self._sock, self._loop, self._size = sock, loop, size
        self._closed = False

    def header(self, name, default=None):
        return self.headers.get(name.lower(), default)

    def respond(self, status, payload, headers=(), content_type="application/json"):
        """Send a whole answer (the body left out for HEAD), then close."""
        head = _head(status, [("Content-Type", content_type),
                              ("Content-Length", str(len(payload)))] + list(headers))
        try:
            self.write(head + (b"" if self.method == "HEAD" else payload))
        finally:
            self.close()

    def start_stream(self, status, content_type):
        self.write(_head(status, [("Content-Type", content_type)]))

    def write(self, data):
        """Blocking write; raises ClientGone when the client went away."""
        try:
            self._sock.sendall(data)
        except OSError as exc:  # EPIPE, ECONNRESET, or no room for write_seconds
            raise ClientGone(exc.strerror or str(exc)) from None

    def release_body(self):
        """Give the body's bytes back to the budget (once the handler is done)."""
        self.body = None
        self._loop.release(self._size)
        self._size = 0

    def close(self):
        if not self._closed:
            self._closed = True
            self.release_body()
            self._loop.closed(self._sock)


class ClientGone(Exception):
    """The client closed its end before the answer was written."""


def _head(status, headers):
    try:
        reason = http.HTTPStatus(status).phrase
    except ValueError:
        reason = ""
    lines = ["HTTP/1.0 %d %s" % (status, reason), "Server: " + SERVER,
             "Date: " + email.utils.formatdate(usegmt=True)]
    lines += ["%s: %s" % pair for pair in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def error_answer(exc):
    """(status, payload, headers) of an agent error: the API's error body."""
    return exc.status, json.dumps(exc.to_body()).encode(), list(exc.headers().items())


def _tell(sock, exc):
    """Send the error answer without waiting (a small body fits the socket's
    buffer) and read what the client sent: closing over unread bytes would
    reset the connection, and the client would lose the answer."""
    status, payload, headers = error_answer(exc)
    try:
        sock.setblocking(False)
        sock.send(_head(status, [("Content-Type", "application/json"),
                                 ("Content-Length", str(len(payload)))] + headers) + payload)
        sock.shutdown(socket.SHUT_WR)
        for _ in range(16):
            if not sock.recv(65536):
                break
    except OSError:
        pass


class _Reading:
    """A connection still sending its request."""

    __slots__ = ("sock", "fd", "deadline", "buf", "head", "body", "got", "size", "done")

    def __init__(self, sock, deadline):
        self.sock, self.fd, self.deadline = sock, sock.fileno(), deadline
        self.done = False  # handed over or closed: events still pending for it are stale
        self.buf = bytearray()
        self.head = None  # (method, target, version, headers) once read
        self.body = None  # bytearray(size) being filled
        self.got = 0
        self.size = 0     # bytes reserved in the budget


class _Lane:
    """A fixed set of daemon threads running what is put in their queue."""

    def __init__(self, name, size, log):
        self._queue = queue.SimpleQueue()
        self._log = log
        self._threads = [threading.Thread(target=self._run, name="%s-%d" % (name, i),
                                          daemon=True) for i in range(size)]
        for t in self._threads:
            t.start()

    def submit(self, fn, *args):
        self._queue.put((fn, args))

    def stop(self):
        for _ in self._threads:
            self._queue.put(None)

    def _run(self):
        while (item := self._queue.get()) is not None:
            fn, args = item
            try:
                fn(*args)
            except Exception:  # answer() handles its errors; this is a bug
                self._log.exception("API request thread failed")
            # Nothing of this request stays alive while the thread waits for
            # the next: a 60 MB import kept its body and decoded copies
            # (~180 MB by tracemalloc) until then.
            del item, fn, args


class ConnectionLoop:
    def __init__(self, listener, answer, log, limits=None):
        self.limits = limits or Limits()
        self._listener = listener
        self._answer = answer  # answer(exchange), on a pool thread
        self._log = log
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._reading = {}  # fileno -> _Reading, oldest first
        self._lock = threading.Lock()
        self._open = 0      # connections accepted and not closed yet
        self._held = 0      # body bytes reserved
        self._streams = 0
        self._accept_paused_until = 0.0
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._stopped.set()
        self._lanes = {"cni": _Lane("api-cni", self.limits.cni_threads, log),
                       "other": _Lane("api", self.limits.other_threads, log)}

    # --- counters, from any thread ---

    def stats(self):
        with self._lock:
            return {"open": self._open, "reading": len(self._reading), "bodyBytes": self._held,
                    "streams": self._streams}

    def release(self, size):
        if size:
            with self._lock:
                self._held -= size

    def closed(self, sock):
        try:
            sock.close()
        finally:
            with self._lock:
                self._open -= 1

    def start_stream_thread(self, fn, *args):
        """Run fn(*args) on a thread of its own; False when max_streams run."""
        with self._lock:
            if self._streams >= self.limits.max_streams:
                return False
            self._streams += 1

        def run():
            try:
                fn(*args)
            finally:
                with self._lock:
                    self._streams -= 1
        threading.Thread(target=run, name="api-stream", daemon=True).start()
        return True

    # --- the loop thread ---

    def run(self, poll_interval=0.5):
        self._stopped.clear()
        self._listener.setblocking(False)
        self._sel.register(self._listener, selectors.EVENT_READ, "accept")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        try:
            while not self._stopping.is_set():
                now = time.monotonic()
                timeout = poll_interval
                if self._reading:
                    first = next(iter(self._reading.values()))
                    timeout = max(0.0, min(timeout, first.deadline - now))
                if self._accept_paused_until and now >= self._accept_paused_until:
                    self._accept_paused_until = 0.0
                    self._sel.register(self._listener, selectors.EVENT_READ, "accept")
                for key, _ in self._sel.select(timeout):
                    if key.data == "accept":
                        self._accept()
                    elif key.data == "wake":
                        self._drain_wake()
                    else:
                        self._read(key.data)
                self._expire(time.monotonic())
        finally:
            for reading in list(self._reading.values()):
                self._drop(reading)
            for obj in (self._listener, self._wake_r):
                try:
                    self._sel.unregister(obj)
                except (KeyError, ValueError):
                    pass
            self._stopped.set()

    def stop(self):
        """Stop the loop (its open requests are dropped) and wait for it."""
        self._stopping.set()
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        self._stopped.wait()

    def close(self):
        for lane in self._lanes.values():
            lane.stop()
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()

    def _drain_wake(self):
        try:
            while self._wake_r.recv(512):
                pass
        except BlockingIOError:
            pass

    def _accept(self):
        for _ in range(64):  # then read what is there before accepting more
            try:
                sock, _ = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    if self._evict_oldest("out of descriptors (%s)" % exc.strerror):
                        continue
                    # nothing to give back: wait instead of spinning on the listener
                    self._sel.unregister(self._listener)
                    self._accept_paused_until = time.monotonic() + 0.1
                    return
                if exc.errno in (errno.ECONNABORTED, errno.EINTR):
                    continue
                raise
            with self._lock:
                self._open += 1
                full = self._open > self.limits.max_connections
            if full and not self._evict_oldest("%d connections open" % self.limits.max_connections):
                self._refuse(sock, Busy("agent has %d connections open, all being answered; "
                                        "try again" % self.limits.max_connections))
                continue
            sock.setblocking(False)
            reading = _Reading(sock, time.monotonic() + self.limits.request_seconds)
            self._reading[reading.fd] = reading
            self._sel.register(sock, selectors.EVENT_READ, reading)

    def _evict_oldest(self, why):
        """Close the connection that has been sending its request longest."""
        if not self._reading:
            return False
        oldest = next(iter(self._reading.values()))
        self._log.debug("closing the oldest unfinished request: %s", why)
        self._finish(oldest, Busy("agent closed this unfinished request to serve others: %s"
                                  % why))
        return True

    def _expire(self, now):
        while self._reading:
            first = next(iter(self._reading.values()))
            if first.deadline > now:
                return
            self._log.debug("request not complete within %.0f s: closed",
                            self.limits.request_seconds)
            self._finish(first, RequestTimeout("request not complete within %.0f s"
                                               % self.limits.request_seconds))

    def _read(self, reading):
        if reading.done:  # closed earlier in this round of events
            return None
        try:
            if reading.body is not None:
                view = memoryview(reading.body)[reading.got:]
                n = reading.sock.recv_into(view, min(len(view), 1 << 20))
                view.release()
                if n == 0:
                    return self._drop(reading)
                reading.got += n
            else:
                data = reading.sock.recv(65536)
                if not data:
                    return self._drop(reading)
                reading.buf += data
                self._parse_head(reading)
        except BlockingIOError:
            return None
        except AgentError as exc:
            return self._finish(reading, exc)
        except OSError:
            return self._drop(reading)
        if reading.head is not None and reading.got >= reading.size:
            self._hand_over(reading)
        return None

    def _parse_head(self, reading):
        buf = reading.buf
        end, sep = buf.find(b"\r\n\r\n"), 4
        bare = buf.find(b"\n\n")
        if bare != -1 and (end == -1 or bare < end):
            end, sep = bare, 2
        if end == -1:
            if len(buf) > self.limits.max_head:
                if b"\n" not in buf:
                    raise UriTooLong("request line longer than %d bytes" % self.limits.max_head)
                raise HeadersTooLarge("request headers longer than %d bytes"
                                      % self.limits.max_head)
            return
        if end > self.limits.max_head:
            raise HeadersTooLarge("request headers longer than %d bytes" % self.limits.max_head)
        lines = bytes(buf[:end]).decode("latin-1").split("\n")
        rest = bytes(buf[end + sep:])
        reading.buf = bytearray()
        parts = lines[0].strip().split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or \
                not (parts[0].isalpha() and parts[0].isupper()):
            raise BadRequest("malformed request line '%s': want 'METHOD /path HTTP/1.0'"
                             % escaped(lines[0].strip()[:200]))
        headers = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon or not name.strip() or name != name.strip():
                raise BadRequest("malformed header line '%s'" % escaped(line.strip()[:200]))
            headers[name.lower()] = value.strip()
        size = reading.size = self._body_size(headers)
        reading.head = (parts[0], parts[1], parts[2], headers)
        if size:
            reading.body = bytearray(size)
            got = rest[:size]
            reading.body[:len(got)] = got
            reading.got = len(got)

    def _body_size(self, headers):
        text = headers.get("content-length", "0").strip() or "0"
        if not text.isdigit():  # reading to an EOF the client never sends would hang
            raise BadRequest("invalid Content-Length '%s': want a number of bytes"
                             % escaped(text[:40]))
        size = int(text)
        if size > self.limits.max_body:
            raise PayloadTooLarge("request body too large (%d bytes; the limit is %d)"
                                  % (size, self.limits.max_body))
        with self._lock:
            if size > self.limits.small_body and \
                    self._held + size > self.limits.body_budget:
                raise Busy("agent is reading %d bytes of other requests; a body of %d bytes "
                           "would pass its %d; try again" % (self._held, size,
                                                             self.limits.body_budget))
            self._held += size
        return size

    def _unregister(self, reading):
        reading.done = True
        self._reading.pop(reading.fd, None)
        try:
            self._sel.unregister(reading.sock)
        except (KeyError, ValueError):
            pass

    def _hand_over(self, reading):
        self._unregister(reading)
        method, target, version, headers = reading.head
        reading.sock.setblocking(True)
        reading.sock.settimeout(self.limits.write_seconds)
        exchange = Exchange(self, reading.sock, method, target, version, headers,
                            reading.body, reading.size)
        reading.body = None  # the exchange's now, freed with it
        lane = "cni" if "x-cni-command" in headers else "other"
        self._lanes[lane].submit(self._answer, exchange)

    def _finish(self, reading, exc):
        """Answer an unfinished request with an error (without blocking), close it."""
        self._unregister(reading)
        _tell(reading.sock, exc)
        self._close_reading(reading)

    def _drop(self, reading):
        self._unregister(reading)
        self._close_reading(reading)

    def _close_reading(self, reading):
        self.release(reading.size)
        reading.body, reading.size = None, 0
        self.closed(reading.sock)

    def _refuse(self, sock, exc):
        _tell(sock, exc)
        self.closed(sock)
