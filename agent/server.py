"""The agent's HTTP+JSON API on a root-only Unix socket.

The operations of its contract, agent/api/openapi.yaml, each a handler
named by its operationId (the services' in agent/api_services.py); the
router built from the document (agent/router.py) has checked a request
before its handler sees it. `curl --unix-socket SOCK http://localhost/v1/...`
works. One thread per connection; every change is handed to the serial
worker. The socket is created the careful way: refuse to start if another
agent answers on it, bind a temporary name, chmod 0600, then rename into
place.
"""

import json
import os
import socket
import socketserver
import time
from http.server import BaseHTTPRequestHandler

from agent import api_services
from agent.errors import AgentError, BadRequest, NotFound, RouteNotFound
from agent.logs import pod_fields
from agent.router import Router, load_document

# Imports send whole files: 10,000 Kubernetes services with their
# EndpointSlices are ~4 MB of YAML (~5 MB as JSON).
MAX_BODY = 64 << 20


class SocketInUse(Exception):
    pass


class Stream:
    """A response body of JSON lines, written as they come (monitor)."""

    def __init__(self, items):
        self.items = items


class Api:
    """The agent's operations behind the router: `handle(method, path, body)`
    routes through the table built from the API document."""

    def __init__(self, manager, worker, info, enforcement=None, datapath=None, hub=None,
                 stopping=None, metrics=None, operations=None, services=None):
        self.manager = manager
        self.worker = worker
        self.info = info  # callable -> dict for /v1/status
        self.enf = enforcement
        self.datapath = datapath
        self.hub = hub
        self.stopping = stopping
        self.metrics = metrics  # agent.metrics.Metrics: CNI operations by verb
        self.operations = operations  # agent.operations.Operations: progress of long work
        self.services = services  # agent.services.ServiceManager, or None: no /v1/services
        self.router = Router(load_document(), HANDLERS)

    def handle(self, method, path, body):
        handler, request = self.router.route(method, path, body)
        return handler(self, request)

    def run_operation(self, kind, op_id, fn, *args):
        """fn(*args, progress) on the worker as an operation clients can poll."""
        if self.operations is None:
            return self.worker.submit(fn, *args, None, wait=300.0)
        return self.operations.run(
            kind, lambda op: self.worker.submit(fn, *args, op.update, wait=300.0), op_id)


# --- handlers: one per operation of agent/api/openapi.yaml, named by its operationId ---

def get_healthz(api, req):
    return 200, {"status": "ok"}


def get_status(api, req):
    return 200, api.info()


def list_endpoints(api, req):
    return 200, [api.manager.with_stats(ep) for ep in api.manager.list()]


def get_endpoint(api, req):
    return 200, api.manager.with_stats(api.manager.get(req.params["key"]))


def put_endpoint(api, req):
    return 201, api.worker.submit(api.manager.create, req.params["key"], req.body)


def delete_endpoint(api, req):
    key = req.params["key"]
    if api.worker.submit(api.manager.delete, key):
        return 200, {"deleted": key}
    return 404, NotFound("no endpoint '%s'" % key).to_body()


def check_endpoint(api, req):
    addresses = (req.body or {}).get("addresses")
    return 200, {"problems": api.manager.check(req.params["key"], addresses)}


def put_endpoint_labels(api, req):
    return 200, api.worker.submit(api.manager.change_labels, req.params["key"],
                                  req.body.get("add", []), req.body.get("delete", []))


def get_endpoint_bpf_policy(api, req):
    return 200, api.worker.submit(_bpf_policy, api, req.params["key"])


def _bpf_policy(api, key):
    ep = api.manager.get(key)
    entries = []
    for (direction, identity, proto, port, plen, deny), packets in \
            api.datapath.policy.entries(ep["id"]):
        if plen == 0:
            ports = "any"
        else:
            last = port + (1 << (16 - plen)) - 1
            ports = str(port) if last == port else "%d-%d" % (port, last)
        entries.append({"direction": direction, "identity": identity, "proto": proto,
                        "ports": ports if proto else "any", "deny": deny, "packets": packets})
    entries.sort(key=lambda e: (e["direction"], e["deny"], e["identity"], e["proto"],
                                e["ports"]))
    return {"endpoint": ep["id"], "identity": ep.get("identity"),
            "enforced": api.enf.endpoint_policy(ep["id"]), "entries": entries}


def list_identities(api, req):
    return 200, api.worker.submit(api.enf.identity_rows)


def get_policy(api, req):
    return 200, api.worker.submit(api.enf.policy_view)


def import_policy(api, req):
    rules = api.run_operation("policy-import", req.query.get("operation"),
                              api.enf.import_files, req.body["files"])
    return 200, {"rules": rules, "revision": api.enf.repo.revision}


def delete_policy(api, req):
    query = req.query
    if not (query.get("all") == "1" or query.get("source") or query.get("name")):
        # one rule the document cannot state: one of three parameters
        raise BadRequest("policy delete needs ?name=NAME[&namespace=NS], ?source=FILE or ?all=1")
    deleted = api.worker.submit(api.enf.delete_policy, query.get("name"), query.get("namespace"),
                                query.get("source"), query.get("all") == "1")
    return 200, {"deleted": deleted, "revision": api.enf.repo.revision}


def list_selectors(api, req):
    return 200, api.worker.submit(api.enf.cache.selectors)


def list_operations(api, req):
    return 200, _operations(api, req).list()


def get_operation(api, req):
    op = _operations(api, req).get(req.params["id"])
    if op is None:
        raise NotFound("no operation '%s'" % req.params["id"])
    return 200, op


def _operations(api, req):
    if api.operations is None:
        raise RouteNotFound("no route for %s %s: this agent keeps no operations"
                            % (req.method, req.path))
    return api.operations


def get_monitor(api, req):
    kind = req.query.get("type", "all")
    if kind == "lb" and api.services is not None:
        return 200, Stream(api_services.lb_events(api))
    return 200, Stream(api.hub.stream(kind, api.stopping))


def post_gc(api, req):
    removed = api.worker.submit(api.manager.gc, req.body["network"], req.body["valid"])
    return 200, {"removed": removed}


HANDLERS = {fn.__name__: fn for fn in (
    get_healthz, get_status, list_endpoints, get_endpoint, put_endpoint, delete_endpoint,
    check_endpoint, put_endpoint_labels, get_endpoint_bpf_policy, list_identities, get_policy,
    import_policy, delete_policy, list_selectors, list_operations, get_operation, get_monitor,
    post_gc)}
HANDLERS.update(api_services.HANDLERS)


class _Handler(BaseHTTPRequestHandler):
    server_version = "cilium-cni-agent"
    protocol_version = "HTTP/1.0"

    def _serve(self, method):
        started = time.monotonic()
        body, headers = None, {}
        try:
            body = self._read_body()
            status, out = self.server.api.handle(method, self.path, body)
        except AgentError as exc:
            status, out, headers = exc.status, exc.to_body(), exc.headers()
        except Exception as exc:  # a bug must answer, not hang the plugin
            self.server.log.exception("internal error serving %s %s", method, self.path,
                                      extra=self._pod(body))
            status, out = 500, AgentError("internal agent error: %s" % exc).to_body()
        verb = self.headers.get("X-CNI-Command")
        if status >= 400 and (method != "GET" or verb):
            self._log_failure(method, verb, status, out, body)
        if verb and self.server.api.metrics is not None:
            self.server.api.metrics.observe(verb, status, time.monotonic() - started)
        if isinstance(out, Stream):
            self._write_stream(status, out)
            return
        payload = json.dumps(out).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(payload)
        self.server.log.debug("%s %s -> %d in %.1f ms", method, self.path, status,
                              (time.monotonic() - started) * 1000)

    def _pod(self, body):
        """Pod fields of /v1/endpoints/{cid:ifname}[/...] and its request body."""
        parts = [p for p in self.path.split("?", 1)[0].split("/") if p]
        if len(parts) < 3 or parts[1] != "endpoints" or ":" not in parts[2]:
            return {}
        fields = pod_fields(body if isinstance(body, dict) else None)
        fields.update(pod_fields(key=parts[2]))  # the path is what the agent acted on
        return fields

    def _log_failure(self, method, verb, status, out, body):
        """Failed changes and CNI calls go to the log (and the recent-errors
        ring of `cilium-cni status`), with the pod's fields when known."""
        if verb == "DEL" and status == 404:
            return
        message = (out.get("error") or {}).get("message") if isinstance(out, dict) else None
        self.server.log.warning("%s %s failed (HTTP %d): %s", verb or method,
                                self.path.split("?", 1)[0], status, message or out,
                                extra=self._pod(body))

    def _write_stream(self, status, stream):
        self.send_response(status)
        self.send_header("Content-Type", "application/x-ndjson")
        self.end_headers()
        try:
            for item in stream.items:
                # None is a heartbeat: an empty line finds a vanished client
                self.wfile.write(b"\n" if item is None else json.dumps(item).encode() + b"\n")
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            close = getattr(stream.items, "close", None)
            if close:
                close()

    def _read_body(self):
        text = (self.headers.get("Content-Length") or "0").strip()
        if not text.isdigit():  # read(-1) would wait for an EOF the client never sends
            raise BadRequest("invalid Content-Length %r: want a number of bytes" % text[:40])
        length = int(text)
        if length > MAX_BODY:
            raise BadRequest("request body too large (%d bytes)" % length)
        if not length:
            return None
        raw = self.rfile.read(length)
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise BadRequest("request body is not JSON: %s" % exc) from None
        except RecursionError:
            raise BadRequest("request body is not JSON the agent reads: nested too deeply") \
                from None

    def do_GET(self):
        self._serve("GET")

    def do_PUT(self):
        self._serve("PUT")

    def do_POST(self):
        self._serve("POST")

    def do_DELETE(self):
        self._serve("DELETE")

    def __getattr__(self, name):
        # Any other method (PATCH, HEAD, TRACE, ...) reaches the router too,
        # which answers 405 and the methods the path serves, or 404.
        if name.startswith("do_") and name[3:].isalpha() and name[3:].isupper():
            return lambda: self._serve(name[3:])
        raise AttributeError(name)

    def address_string(self):
        return "unix"

    def log_message(self, fmt, *args):
        self.server.log.debug(fmt, *args)


class UnixApiServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    request_queue_size = 256

    def __init__(self, path, api, log):
        self.api = api
        self.log = log
        self.socket_path = path
        super().__init__(path, _Handler, bind_and_activate=False)

    def server_bind(self):
        path = self.socket_path
        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        if os.path.exists(path):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
                raise SocketInUse("another agent is already serving on '%s'" % path)
            except (ConnectionRefusedError, FileNotFoundError):
                pass  # a stale socket from an agent that died
            finally:
                probe.close()
        tmp = "%s.%d.tmp" % (path, os.getpid())
        if os.path.exists(tmp):
            os.unlink(tmp)
        self.socket.bind(tmp)
        os.chmod(tmp, 0o600)
        os.rename(tmp, path)
        self.server_address = path

    def remove_socket(self):
        try:
            os.unlink(self.socket_path)
        except FileNotFoundError:
            pass
