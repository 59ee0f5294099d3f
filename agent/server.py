"""The agent's HTTP+JSON API on a root-only Unix socket.

`curl --unix-socket SOCK http://localhost/v1/...` works. One thread per
connection; every change is handed to the serial worker. The socket is
created the careful way: refuse to start if another agent answers on it,
bind a temporary name, chmod 0600, then rename into place.
"""

import json
import os
import socket
import socketserver
import time
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qsl

from agent.errors import AgentError, BadRequest, NotFound
from agent.logs import pod_fields

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
    """Routes: (method, path) -> handler, over the manager and worker."""

    def __init__(self, manager, worker, info, enforcement=None, datapath=None, hub=None,
                 stopping=None, metrics=None, operations=None):
        self.manager = manager
        self.worker = worker
        self.info = info  # callable -> dict for /v1/status
        self.enf = enforcement
        self.datapath = datapath
        self.hub = hub
        self.stopping = stopping
        self.metrics = metrics  # agent.metrics.Metrics: CNI operations by verb
        self.operations = operations  # agent.operations.Operations: progress of long work

    def handle(self, method, path, body):
        query = dict(parse_qsl(path.partition("?")[2]))
        parts = [p for p in path.split("?", 1)[0].split("/") if p]
        if parts[:1] != ["v1"]:
            raise NotFound("no such API path '%s' (the API lives under /v1)" % path)
        parts = parts[1:]
        if parts[:1] == ["services"] and getattr(self, "services", None) is not None:
            from agent import api_services
            return api_services.handle(self, method, parts[1:], query, body)
        if parts == ["healthz"] and method == "GET":
            return 200, {"status": "ok"}
        if parts == ["status"] and method == "GET":
            return 200, self.info()
        if parts == ["endpoints"] and method == "GET":
            return 200, [self.manager.with_stats(ep) for ep in self.manager.list()]
        if len(parts) == 2 and parts[0] == "endpoints":
            key = parts[1]
            if method == "GET":
                return 200, self.manager.with_stats(self.manager.get(key))
            if method == "PUT":
                return 201, self.worker.submit(self.manager.create, key, body)
            if method == "DELETE":
                deleted = self.worker.submit(self.manager.delete, key)
                return (200, {"deleted": key}) if deleted else (404, NotFound(
                    "no endpoint '%s'" % key).to_body())
        if len(parts) == 3 and parts[0] == "endpoints" and parts[2] == "check" \
                and method == "POST":
            addresses = (body or {}).get("addresses") if isinstance(body, dict) else None
            if addresses is not None and not isinstance(addresses, list):
                raise BadRequest("check: 'addresses' must be a list")
            return 200, {"problems": self.manager.check(parts[1], addresses)}
        if len(parts) == 3 and parts[0] == "endpoints" and parts[2] == "labels" and method == "PUT":
            if not isinstance(body, dict):
                raise BadRequest("labels needs a JSON object body with 'add' and 'delete'")
            return 200, self.worker.submit(self.manager.change_labels, parts[1],
                                           body.get("add", []), body.get("delete", []))
        if len(parts) == 3 and parts[0] == "endpoints" and parts[2] == "bpf-policy" \
                and method == "GET":
            return 200, self.worker.submit(self._bpf_policy, parts[1])
        if parts == ["identities"] and method == "GET":
            return 200, self.worker.submit(self.enf.identity_rows)
        if parts == ["policy"] and method == "GET":
            return 200, self.worker.submit(self.enf.policy_view)
        if parts == ["policy"] and method == "POST":
            if not isinstance(body, dict) or not isinstance(body.get("files"), list):
                raise BadRequest("policy import needs {'files': [{'source', 'text'}, ...]}")
            rules = self._long("policy-import", query.get("operation"), self.enf.import_files,
                               body["files"])
            return 200, {"rules": rules, "revision": self.enf.repo.revision}
        if parts == ["operations"] and method == "GET" and self.operations:
            return 200, self.operations.list()
        if len(parts) == 2 and parts[0] == "operations" and method == "GET" and self.operations:
            op = self.operations.get(parts[1])
            if op is None:
                raise NotFound("no operation '%s'" % parts[1])
            return 200, op
        if parts == ["policy"] and method == "DELETE":
            if not (query.get("all") == "1" or query.get("source") or query.get("name")):
                raise BadRequest("policy delete needs ?name=NAME[&namespace=NS], ?source=FILE "
                                 "or ?all=1")
            deleted = self.worker.submit(self.enf.delete_policy, query.get("name"),
                                         query.get("namespace"), query.get("source"),
                                         query.get("all") == "1")
            return 200, {"deleted": deleted, "revision": self.enf.repo.revision}
        if parts == ["policy", "selectors"] and method == "GET":
            return 200, self.worker.submit(self.enf.cache.selectors)
        if parts == ["monitor"] and method == "GET":
            kind = query.get("type", "all")
            if kind not in ("all", "drop", "lb"):
                raise BadRequest("monitor type must be 'all', 'drop' or 'lb', not %r" % kind)
            if kind == "lb" and getattr(self, "services", None) is not None:
                from agent import api_services
                return 200, Stream(api_services.lb_events(self))
            return 200, Stream(self.hub.stream(kind, self.stopping))
        if parts == ["gc"] and method == "POST":
            if not isinstance(body, dict):
                raise BadRequest("gc needs a JSON object body")
            removed = self.worker.submit(self.manager.gc, body.get("network"), body.get("valid"))
            return 200, {"removed": removed}
        raise NotFound("no route for %s %s" % (method, path))

    def _long(self, kind, op_id, fn, *args):
        """fn(*args, progress) on the worker as an operation clients can poll."""
        if self.operations is None:
            return self.worker.submit(fn, *args, None, wait=300.0)
        return self.operations.run(
            kind, lambda op: self.worker.submit(fn, *args, op.update, wait=300.0), op_id)

    def _bpf_policy(self, key):
        ep = self.manager.get(key)
        entries = []
        for (direction, identity, proto, port, plen, deny), packets in \
                self.datapath.policy.entries(ep["id"]):
            if plen == 0:
                ports = "any"
            else:
                last = port + (1 << (16 - plen)) - 1
                ports = str(port) if last == port else "%d-%d" % (port, last)
            entries.append({"direction": direction, "identity": identity, "proto": proto,
                            "ports": ports if proto else "any", "deny": deny,
                            "packets": packets})
        entries.sort(key=lambda e: (e["direction"], e["deny"], e["identity"], e["proto"],
                                    e["ports"]))
        return {"endpoint": ep["id"], "identity": ep.get("identity"),
                "enforced": self.enf.endpoint_policy(ep["id"]), "entries": entries}


class _Handler(BaseHTTPRequestHandler):
    server_version = "cilium-cni-agent"
    protocol_version = "HTTP/1.0"

    def _serve(self, method):
        started = time.monotonic()
        body = None
        try:
            body = self._read_body()
            status, out = self.server.api.handle(method, self.path, body)
        except AgentError as exc:
            status, out = exc.status, exc.to_body()
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
        self.end_headers()
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
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise BadRequest("request body too large (%d bytes)" % length)
        if not length:
            return None
        raw = self.rfile.read(length)
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise BadRequest("request body is not JSON: %s" % exc) from None

    def do_GET(self):
        self._serve("GET")

    def do_PUT(self):
        self._serve("PUT")

    def do_POST(self):
        self._serve("POST")

    def do_DELETE(self):
        self._serve("DELETE")

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
