"""A stand-in Kubernetes API server for tests: real HTTP on loopback.

No kube-apiserver can be installed here (docs/kubernetes.md), so the tests
run this one. It speaks the wire protocol a client library speaks to the
real server, for the resources the agent reads (`RESOURCES`):

- GET of a collection (all namespaces, one namespace, or cluster-scoped)
  answers a `<Kind>List` whose `metadata.resourceVersion` is the store's
  revision; items carry no kind/apiVersion, as the real server's built-in
  lists do. `limit` pages with a `continue` token; a token that expired
  (`expire_continue_tokens()`) answers HTTP 410 Expired, as the real server
  does after etcd compacted the listing's revision.
- `?watch=1&resourceVersion=N` answers 200 with chunked, newline-delimited
  JSON events ADDED/MODIFIED/DELETED from the event history after N; with
  `allowWatchBookmarks=true` also BOOKMARK events (object: the kind with
  only `metadata.resourceVersion`) when `bookmark()` is called or every
  `bookmark_interval` seconds. A watch without resourceVersion (or "0")
  starts with an ADDED for every object. N older than the bounded history
  (`history` events) gets an ERROR event holding a Status with code 410
  (reason Expired), then the end of the stream: the real server's watch
  cache answers a too-old resourceVersion that way, not with HTTP 410.
  `timeoutSeconds` ends the stream cleanly.
- A bearer token is required when `token` is set (401 otherwise).

Every object is validated (tests/k8s/schemas.py) before it is stored, so a
test cannot feed the agent an object the real server would refuse. The
controls are methods called from the test: create/update/delete (each
bumps the one global resourceVersion), `bookmark()`, `drop_watches()` (cut
every watch connection without the chunked terminator),
`fail_next_watches(n)` (the next n watches get 410), `compact()` (forget
the history), `stop()`/`start()` on the same port. The code under test
reaches it only through a kubeconfig (`write_kubeconfig`).
"""

import base64
import collections
import copy
import dataclasses
import datetime
import http.server
import json
import select
import socket
import threading
import time
import urllib.parse
import uuid

from tests.k8s import schemas
from tests.k8s.schemas import Invalid


@dataclasses.dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool

    @property
    def api_version(self):
        return "%s/%s" % (self.group, self.version) if self.group else self.version

    @property
    def prefix(self):
        return "/apis/%s/%s" % (self.group, self.version) if self.group else "/api/v1"


RESOURCES = [
    Resource("", "v1", "pods", "Pod", True),
    Resource("", "v1", "namespaces", "Namespace", False),
    Resource("", "v1", "services", "Service", True),
    Resource("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", True),
    Resource("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", True),
    Resource("cilium.io", "v2", "ciliumnetworkpolicies", "CiliumNetworkPolicy", True),
    Resource("cilium.io", "v2", "ciliumclusterwidenetworkpolicies",
             "CiliumClusterwideNetworkPolicy", False),
]
BY_KIND = {(r.api_version, r.kind): r for r in RESOURCES}
BY_PATH = {(r.prefix, r.plural): r for r in RESOURCES}


def status(code, reason, message):
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


class _Request(Exception):
    """An HTTP error answer: code + Status object."""

    def __init__(self, code, reason, message):
        super().__init__(message)
        self.code = code
        self.status = status(code, reason, message)


class ApiServer:
    """The store, its history and the HTTP server; see the module docstring."""

    def __init__(self, port=0, history=1000, token="stand-in-token", bookmark_interval=None):
        self.port = port
        self.token = token
        self.bookmark_interval = bookmark_interval
        self._cond = threading.Condition()
        self._rv = 1
        self._objects = {r: {} for r in RESOURCES}
        self._history = collections.deque()
        self._history_max = history
        self._compacted = 0          # a watch from below this has lost events: 410
        self._fail_watches = 0
        self._drop_epoch = 0
        self._bookmark_epoch = 0
        self._snapshots = collections.OrderedDict()
        self._server = None
        self._thread = None
        self._conns = set()
        self._watching = set()
        self.watches_started = 0     # watches that got past their start (for tests to wait on)
        self.requests = []           # (method, path, query dict) of every request, in order

    # ---- lifecycle -------------------------------------------------------------------------

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def start(self):
        """Listens on 127.0.0.1:port (a free port the first time if 0)."""
        handler = type("Handler", (_Handler,), {"api": self})
        self._server = _HTTPServer(("127.0.0.1", self.port), handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="apiserver",
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        """Stops listening and cuts every open connection; the store is kept."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        with self._cond:
            self._drop_epoch += 1
            conns = list(self._conns)
            self._cond.notify_all()
        for conn in conns:
            _cut(conn)
        self._thread.join(5)
        self._server = None

    def write_kubeconfig(self, path):
        """A kubeconfig naming this server and its token; returns path."""
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "stand-in",
            "clusters": [{"name": "stand-in", "cluster": {"server": self.url}}],
            "users": [{"name": "agent", "user": {"token": self.token}}],
            "contexts": [{"name": "stand-in",
                          "context": {"cluster": "stand-in", "user": "agent"}}],
        }
        with open(path, "w") as f:
            json.dump(config, f)
        return str(path)

    # ---- the store (test controls) ---------------------------------------------------------

    @property
    def resource_version(self):
        with self._cond:
            return self._rv

    def create(self, obj):
        """Stores a new object (validated); returns it as stored."""
        res, key = self._resolve(obj)
        with self._cond:
            if key in self._objects[res]:
                raise Invalid("%s %s/%s already exists" % (res.kind, key[0], key[1]))
            stored = self._stamp(res, obj, None)
            self._commit(res, key, "ADDED", stored)
            return copy.deepcopy(stored)

    def update(self, obj):
        """Replaces an existing object (validated); returns it as stored."""
        res, key = self._resolve(obj)
        with self._cond:
            old = self._objects[res].get(key)
            if old is None:
                raise Invalid("%s %s/%s does not exist" % (res.kind, key[0], key[1]))
            stored = self._stamp(res, obj, old)
            self._commit(res, key, "MODIFIED", stored)
            return copy.deepcopy(stored)

    def apply(self, obj):
        """create or update, as `kubectl apply` would."""
        res, key = self._resolve(obj)
        with self._cond:
            exists = key in self._objects[res]
        return self.update(obj) if exists else self.create(obj)

    def delete(self, kind, name, namespace=None, api_version=None):
        """Deletes an object; the DELETED event carries its last state."""
        res = self._resource_of_kind(kind, api_version)
        key = (namespace or "default" if res.namespaced else "", name)
        with self._cond:
            old = self._objects[res].get(key)
            if old is None:
                raise Invalid("%s %s/%s does not exist" % (res.kind, key[0], key[1]))
            gone = copy.deepcopy(old)
            self._rv += 1
            gone["metadata"]["resourceVersion"] = str(self._rv)
            self._commit(res, key, "DELETED", gone, bump=False)

    def get(self, kind, name, namespace=None, api_version=None):
        res = self._resource_of_kind(kind, api_version)
        with self._cond:
            obj = self._objects[res].get((namespace or "default" if res.namespaced else "", name))
            return copy.deepcopy(obj)

    def bookmark(self):
        """Every watch that allows bookmarks gets one at the current resourceVersion."""
        with self._cond:
            self._bookmark_epoch += 1
            self._cond.notify_all()

    def drop_watches(self):
        """Cuts every open watch connection (no chunked terminator), as a
        restarting API server or a broken network would."""
        with self._cond:
            self._drop_epoch += 1
            self._cond.notify_all()

    def fail_next_watches(self, count=1):
        """The next `count` watches get an ERROR event with a 410 Status."""
        with self._cond:
            self._fail_watches += count

    def compact(self):
        """Forgets the event history: a watch from any older resourceVersion gets 410."""
        with self._cond:
            self._history.clear()
            self._compacted = self._rv

    def expire_continue_tokens(self):
        with self._cond:
            self._snapshots.clear()

    def watch_count(self):
        with self._cond:
            return len(self._watching)

    # ---- internals -------------------------------------------------------------------------

    def _resource_of_kind(self, kind, api_version):
        found = [r for r in RESOURCES if r.kind == kind
                 and (api_version is None or r.api_version == api_version)]
        if len(found) != 1:
            raise Invalid("the stand-in serves no kind %r" % kind)
        return found[0]

    def _resolve(self, obj):
        res = BY_KIND.get((obj.get("apiVersion"), obj.get("kind"))) \
            if isinstance(obj, dict) else None
        if res is None:
            raise Invalid("the stand-in serves no %s %s" % (
                obj.get("apiVersion") if isinstance(obj, dict) else "?",
                obj.get("kind") if isinstance(obj, dict) else type(obj).__name__))
        meta = obj.get("metadata") or {}
        if res.namespaced:
            key = (meta.get("namespace") or "default", meta.get("name"))
        elif meta.get("namespace"):
            raise Invalid("%s %s is cluster-scoped: no metadata.namespace" % (
                res.kind, meta.get("name")))
        else:
            key = ("", meta.get("name"))
        return res, key

    def _stamp(self, res, obj, old):
        """The object as the server stores it: validated, with server-set metadata."""
        new = copy.deepcopy(obj)
        meta = new.setdefault("metadata", {})
        if res.namespaced:
            meta["namespace"] = meta.get("namespace") or "default"
        for field in ("uid", "resourceVersion", "creationTimestamp", "generation"):
            meta.pop(field, None)
        if old is None:
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = datetime.datetime.now(datetime.UTC).strftime(
                "%Y-%m-%dT%H:%M:%SZ")
            meta["generation"] = 1
        else:
            meta["uid"] = old["metadata"]["uid"]
            meta["creationTimestamp"] = old["metadata"]["creationTimestamp"]
            changed = {k: v for k, v in new.items() if k not in ("metadata", "status")} != \
                {k: v for k, v in old.items() if k not in ("metadata", "status")}
            meta["generation"] = old["metadata"]["generation"] + (1 if changed else 0)
        meta["resourceVersion"] = str(self._rv + 1)
        schemas.validate(new)
        return new

    def _commit(self, res, key, kind, obj, bump=True):
        if bump:
            self._rv += 1
        if kind == "DELETED":
            del self._objects[res][key]
        else:
            self._objects[res][key] = obj
        self._history.append((self._rv, res, key[0], kind, obj))
        while len(self._history) > self._history_max:
            self._compacted = self._history.popleft()[0]
        self._cond.notify_all()

    def _snapshot(self, res, namespace):
        items = [o for (ns, _), o in sorted(self._objects[res].items())
                 if namespace is None or ns == namespace]
        return self._rv, items

    def list(self, res, namespace, query):
        """The body of a list answer; raises _Request."""
        limit = int(query.get("limit") or 0)
        token = query.get("continue")
        with self._cond:
            if token:
                try:
                    sid, offset = base64.urlsafe_b64decode(token.encode()).decode().split(":")
                    rv, items = self._snapshots[sid]
                    offset = int(offset)
                except (ValueError, KeyError):
                    raise _Request(410, "Expired", "The provided continue parameter is too old "
                                   "to display a consistent list result. You can start a new "
                                   "list without the continue parameter.") from None
            else:
                match = query.get("resourceVersionMatch")
                wanted = query.get("resourceVersion")
                if match == "Exact" and wanted and int(wanted) != self._rv \
                        and int(wanted) < max(self._compacted, 1):
                    raise _Request(410, "Expired", "too old resource version: %s (%d)" % (
                        wanted, self._compacted))
                rv, items = self._snapshot(res, namespace)
                offset = 0
            page = items[offset:offset + limit] if limit else items[offset:]
            meta = {"resourceVersion": str(rv)}
            if limit and offset + limit < len(items):
                sid = token and base64.urlsafe_b64decode(token.encode()).decode().split(":")[0] \
                    or uuid.uuid4().hex
                self._snapshots[sid] = (rv, items)
                while len(self._snapshots) > 16:
                    self._snapshots.popitem(last=False)
                meta["continue"] = base64.urlsafe_b64encode(
                    ("%s:%d" % (sid, offset + limit)).encode()).decode()
                meta["remainingItemCount"] = len(items) - offset - limit
        # the real server leaves kind/apiVersion out of built-in list items
        strip = res.group != "cilium.io"
        out = [{k: v for k, v in o.items() if not (strip and k in ("kind", "apiVersion"))}
               for o in page]
        return {"kind": res.kind + "List", "apiVersion": res.api_version, "metadata": meta,
                "items": out}

    def watch(self, res, namespace, query, begin, send, conn):
        """Streams events through send(event dict) until the watch ends;
        begin() answers the headers once the watch's start is fixed."""
        bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
        timeout = int(query.get("timeoutSeconds") or 0)
        deadline = time.monotonic() + timeout if timeout else None
        wanted = query.get("resourceVersion") or "0"
        with self._cond:
            drop_epoch = self._drop_epoch
            if self._fail_watches:
                self._fail_watches -= 1
                begin()
                send({"type": "ERROR", "object": status(
                    410, "Expired", "too old resource version: %s (%d)" % (wanted, self._rv))})
                return
            if wanted == "0":
                cursor = self._rv
                initial = [o for (ns, _), o in sorted(self._objects[res].items())
                           if namespace is None or ns == namespace]
            else:
                cursor = int(wanted)
                initial = []
                if cursor < self._compacted:
                    begin()
                    send({"type": "ERROR", "object": status(
                        410, "Expired", "too old resource version: %d (%d)" % (
                            cursor, self._compacted))})
                    return
            mark_epoch = self._bookmark_epoch
            self._watching.add(conn)
            self.watches_started += 1
        try:
            begin()
            for obj in initial:
                send({"type": "ADDED", "object": obj})
            self._follow(res, namespace, send, cursor, drop_epoch, mark_epoch, bookmarks,
                         deadline, conn)
        finally:
            with self._cond:
                self._watching.discard(conn)

    def _follow(self, res, namespace, send, cursor, drop_epoch, mark_epoch, bookmarks, deadline,
                conn):
        next_mark = time.monotonic() + self.bookmark_interval if self.bookmark_interval else None
        while True:
            with self._cond:
                if self._drop_epoch != drop_epoch:
                    raise _Cut()
                if cursor < self._compacted:
                    send({"type": "ERROR", "object": status(
                        410, "Expired", "too old resource version: %d (%d)" % (
                            cursor, self._compacted))})
                    return
                events = [(rv, kind, obj) for rv, r, ns, kind, obj in self._history
                          if rv > cursor and r is res and (namespace is None or ns == namespace)]
                mark = None
                now = time.monotonic()
                if bookmarks and (self._bookmark_epoch != mark_epoch
                                  or next_mark is not None and now >= next_mark):
                    mark_epoch = self._bookmark_epoch
                    next_mark = now + self.bookmark_interval if self.bookmark_interval else None
                    mark = self._rv
                if not events and mark is None:
                    if deadline is not None and now >= deadline:
                        return
                    if _peer_closed(conn):
                        raise _Cut()
                    self._cond.wait(0.1)
                    continue
            for rv, kind, obj in events:
                send({"type": kind, "object": obj})
                cursor = rv
            if mark is not None:
                send({"type": "BOOKMARK", "object": {
                    "kind": res.kind, "apiVersion": res.api_version,
                    "metadata": {"resourceVersion": str(mark)}}})
                cursor = max(cursor, mark)


class _Cut(Exception):
    """The watch is to end without its terminating chunk."""


def _peer_closed(sock):
    """The client hung up (a watch writes only on events, so it would not notice)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def _cut(sock):
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    api = None  # the ApiServer, set by ApiServer.start

    def log_message(self, *args):
        pass

    def setup(self):
        super().setup()
        with self.api._cond:
            self.api._conns.add(self.connection)

    def finish(self):
        with self.api._cond:
            self.api._conns.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def _json(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        self.api.requests.append(("GET", url.path, query))
        try:
            if self.api.token and self.headers.get("Authorization") != "Bearer " + self.api.token:
                raise _Request(401, "Unauthorized", "Unauthorized")
            res, namespace, name = self._route(url.path)
            for unsupported in ("labelSelector", "fieldSelector"):
                if query.get(unsupported):
                    raise _Request(400, "BadRequest", "the stand-in does not filter by %s"
                                   % unsupported)
            if name is not None:
                obj = self.api.get(res.kind, name, namespace, res.api_version)
                if obj is None:
                    raise _Request(404, "NotFound", '%s "%s" not found' % (res.plural, name))
                self._json(200, obj)
            elif query.get("watch") in ("1", "true"):
                self._watch(res, namespace, query)
            else:
                self._json(200, self.api.list(res, namespace, query))
        except _Request as exc:
            self._json(exc.code, exc.status)

    def _route(self, path):
        """(resource, namespace or None, name or None) of a path; raises _Request."""
        parts = path.rstrip("/").split("/")
        if parts[1:3] == ["api", "v1"]:
            prefix, rest = "/api/v1", parts[3:]
        elif parts[1:2] == ["apis"] and len(parts) >= 4:
            prefix, rest = "/".join(parts[:4]), parts[4:]
        else:
            raise _Request(404, "NotFound", "the server could not find the requested resource")
        namespace = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        res = BY_PATH.get((prefix, rest[0])) if rest else None
        if res is None or len(rest) > 2 or (namespace is not None and not res.namespaced):
            raise _Request(404, "NotFound", "the server could not find the requested resource")
        name = rest[1] if len(rest) == 2 else None
        if name is not None and res.namespaced and namespace is None:
            raise _Request(404, "NotFound", "the server could not find the requested resource")
        return res, namespace, name

    def _watch(self, res, namespace, query):
        def begin():
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()

        def send(event):
            data = json.dumps(event).encode() + b"\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        try:
            self.api.watch(res, namespace, query, begin, send, self.connection)
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (_Cut, OSError):
            self.close_connection = True
            _cut(self.connection)
