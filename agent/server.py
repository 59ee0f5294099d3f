"""The agent's HTTP+JSON API on a root-only Unix socket.

The operations of its contract, agent/api/openapi.yaml, each a handler
named by its operationId (the services' in agent/api_services.py, the
cluster's in agent/api_cluster.py); the
router built from the document (agent/router.py) has checked a request
before its handler sees it. `curl --unix-socket SOCK http://localhost/v1/...`
works. Connections are read by one loop thread and answered by a few
(agent/connections.py, which bounds what clients may hold); every change is
handed to the serial worker. The socket is created the careful way: refuse to start if another
agent answers on it, bind a temporary name, chmod 0600, then rename into
place.
"""

import json
import os
import socket
import time

from agent import api_cluster, api_services, memory
from agent.connections import ClientGone, ConnectionLoop, Limits
from agent.errors import AgentError, BadRequest, Busy, NotFound, RouteNotFound
from agent.logs import escaped as _escaped
from agent.logs import pod_fields
from agent.router import Router, load_document

# Imports send whole files: 10,000 Kubernetes services with their
# EndpointSlices are ~4 MB of YAML (~5 MB as JSON).
MAX_BODY = Limits().max_body


class SocketInUse(Exception):
    pass


def _close_items(stream):
    close = getattr(stream.items, "close", None)
    if close:
        close()


class Stream:
    """A response body of JSON lines, written as they come (monitor)."""

    def __init__(self, items):
        self.items = items


class Api:
    """The agent's operations behind the router: `handle(method, path, body)`
    routes through the table built from the API document."""

    def __init__(self, manager, worker, info, enforcement=None, datapath=None, hub=None,
                 stopping=None, metrics=None, operations=None, services=None, cluster=None):
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
        self.cluster = cluster  # agent.kvstore.cluster.Cluster, or None: no /v1/nodes, /v1/kvstore
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
    return 200, {"rules": rules, "revision": api.enf.policy_revision()}


def delete_policy(api, req):
    query = req.query
    if not (query.get("all") == "1" or query.get("source") or query.get("name")):
        # one rule the document cannot state: one of three parameters
        raise BadRequest("policy delete needs ?name=NAME[&namespace=NS], ?source=FILE or ?all=1")
    deleted = api.worker.submit(api.enf.delete_policy, query.get("name"), query.get("namespace"),
                                query.get("source"), query.get("all") == "1")
    return 200, {"deleted": deleted, "revision": api.enf.policy_revision()}


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
HANDLERS.update(api_cluster.HANDLERS)


def _pod(path, body):
    """Pod fields of /v1/endpoints/{cid:ifname}[/...] and its request body."""
    parts = [p for p in path.split("?", 1)[0].split("/") if p]
    if len(parts) < 3 or parts[1] != "endpoints" or ":" not in parts[2]:
        return {}
    fields = pod_fields(body if isinstance(body, dict) else None)
    fields.update(pod_fields(key=parts[2]))  # the path is what the agent acted on
    return fields


def _frees_much(method, target, raw, limits):
    """A request after which the agent gives memory back (agent/memory.py):
    a large body (what it decodes to is freed), or a policy delete (the
    rules of a large import are)."""
    return (raw is not None and len(raw) > limits.small_body) or \
        (method == "DELETE" and target.split("?", 1)[0] == "/v1/policy")


def _decode(raw):
    if raw is None or not len(raw):
        return None
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise BadRequest("request body is not JSON: %s" % exc) from None
    except RecursionError:
        raise BadRequest("request body is not JSON the agent reads: nested too deeply") \
            from None


class UnixApiServer:
    """The API on its Unix socket: socket creation here, connections in
    agent.connections, each complete request answered by `_answer`."""

    def __init__(self, path, api, log, limits=None):
        self.api = api
        self.log = log
        self.socket_path = path
        self.limits = limits or Limits()
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.loop = None

    def server_activate(self):
        self.socket.listen(256)
        self.loop = ConnectionLoop(self.socket, self._answer, self.log, self.limits)

    def serve_forever(self, poll_interval=0.5):
        self.loop.run(poll_interval)

    def shutdown(self):
        if self.loop is not None:
            self.loop.stop()

    def server_close(self):
        self.socket.close()
        if self.loop is not None:
            self.loop.close()

    def _answer(self, exchange):
        """Route, run the handler, answer (a pool thread)."""
        started = time.monotonic()
        method, target = exchange.method, exchange.target
        body, headers = None, {}
        give_back = _frees_much(method, target, exchange.body, self.limits)
        try:
            body = _decode(exchange.body)
            exchange.release_body()  # the decoded body is what the handler holds
            status, out = self.api.handle(method, target, body)
        except AgentError as exc:
            status, out, headers = exc.status, exc.to_body(), exc.headers()
        except Exception as exc:  # a bug must answer, not hang the plugin
            self.log.exception("internal error serving %s %s", method, _escaped(target),
                               extra=_pod(target, body))
            status, out = 500, AgentError("internal agent error: %s" % exc).to_body()
        exchange.release_body()
        verb = exchange.header("X-CNI-Command")
        if status >= 400 and (method != "GET" or verb):
            self._log_failure(method, target, verb, status, out, body)
        if verb and self.api.metrics is not None:
            self.api.metrics.observe(verb, status, time.monotonic() - started)
        if isinstance(out, Stream):
            if not self.loop.start_stream_thread(self._write_stream, exchange, status, out):
                _close_items(out)
                busy = Busy("agent serves %d streams already; try again"
                            % self.limits.max_streams)
                self._respond(exchange, busy.status, busy.to_body(), busy.headers())
            return
        self._respond(exchange, status, out, headers)
        self.log.debug("%s %s -> %d in %.1f ms", method, _escaped(target), status,
                       (time.monotonic() - started) * 1000)
        if give_back:  # once answered: the client does not wait for it
            # What the request decoded to must be garbage before the collection
            # and the trim, not after them (it would stay with the allocator).
            body = out = exchange = None
            memory.give_back(self.log)

    def _respond(self, exchange, status, out, headers):
        try:
            exchange.respond(status, json.dumps(out).encode(), list(headers.items()))
        except ClientGone as exc:
            self._gone(exchange, exc)

    def _gone(self, exchange, exc):
        self.log.debug("client of %s %s went away before its answer: %s", exchange.method,
                       _escaped(exchange.target), exc)

    def _log_failure(self, method, target, verb, status, out, body):
        """Failed changes and CNI calls go to the log (and the recent-errors
        ring of `cilium-cni status`), with the pod's fields when known."""
        if verb == "DEL" and status == 404:
            return
        message = (out.get("error") or {}).get("message") if isinstance(out, dict) else None
        self.log.warning("%s %s failed (HTTP %d): %s", _escaped(verb or method),
                         _escaped(target.split("?", 1)[0]), status, message or out,
                         extra=_pod(target, body))

    def _write_stream(self, exchange, status, stream):
        try:
            exchange.start_stream(status, "application/x-ndjson")
            for item in stream.items:
                # None is a heartbeat: an empty line finds a vanished client
                exchange.write(b"\n" if item is None else json.dumps(item).encode() + b"\n")
        except ClientGone as exc:
            self._gone(exchange, exc)
        finally:
            _close_items(stream)
            exchange.close()

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
