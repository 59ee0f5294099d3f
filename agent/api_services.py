"""The /v1/services routes (and the monitor's service translations).

  GET    /v1/services                       -> [service, ...]
  PUT    /v1/services {"services": [...]}   -> add or replace, all or nothing
  POST   /v1/services/import {"files": [{"source", "text"}]}
                                            -> Kubernetes YAML, one batch
  DELETE /v1/services?frontend=IP:PORT/PROTO | ?name=NS/NAME | ?all=1
  GET    /v1/services/bpf                   -> the datapath's view (lb maps)

Changes run on the agent's worker thread, like every other change. The
router (agent/api/openapi.yaml) has checked each request's shape; the
services' values are checked by agent/services.py.
"""

import threading

from agent import k8s_services
from agent.errors import BadRequest, RouteNotFound

_trace_lock = threading.Lock()
_trace_users = [0]


def list_services(api, req):
    return 200, api.worker.submit(_services(api, req).list)


def put_services(api, req):
    return 200, {"services": api.worker.submit(_services(api, req).upsert, req.body["services"],
                                               wait=300.0)}


def import_services(api, req):
    svc = _services(api, req)
    services = k8s_services.parse_files(req.body["files"])
    done = api.worker.submit(svc.upsert, services, wait=300.0)
    return 200, {"services": len(done), "names": len({s["name"] for s in done})}


def delete_services(api, req):
    svc, query = _services(api, req), req.query
    if not (query.get("frontend") or query.get("name") or query.get("all") == "1"):
        # one rule the document cannot state: one of three parameters
        raise BadRequest("service delete needs ?frontend=IP:PORT[/PROTO], ?name=NS/NAME or ?all=1")
    deleted = api.worker.submit(svc.delete, query.get("frontend"), query.get("name"),
                                query.get("all") == "1")
    return 200, {"deleted": deleted}


def list_services_bpf(api, req):
    _services(api, req)
    return 200, api.worker.submit(api.datapath.lb.entries)


def _services(api, req):
    if api.services is None:
        raise RouteNotFound("no route for %s %s: this agent serves no services"
                            % (req.method, req.path))
    return api.services


HANDLERS = {fn.__name__: fn for fn in (
    list_services, put_services, import_services, delete_services, list_services_bpf)}


def lb_events(api):
    """The monitor's translation events; the datapath raises them only
    while at least one client listens."""
    with _trace_lock:
        _trace_users[0] += 1
        if _trace_users[0] == 1:
            api.datapath.lb.set_trace(True)
    try:
        yield from api.hub.stream("lb", api.stopping)
    finally:
        with _trace_lock:
            _trace_users[0] -= 1
            if _trace_users[0] == 0:
                api.datapath.lb.set_trace(False)
