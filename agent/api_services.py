"""The /v1/services routes (and the monitor's service translations).

  GET    /v1/services                       -> [service, ...]
  PUT    /v1/services {"services": [...]}   -> add or replace, all or nothing
  POST   /v1/services/import {"files": [{"source", "text"}]}
                                            -> Kubernetes YAML, one batch
  DELETE /v1/services?frontend=IP:PORT/PROTO | ?name=NS/NAME | ?all=1
  GET    /v1/services/bpf                   -> the datapath's view (lb maps)

Changes run on the agent's worker thread, like every other change.
"""

import threading

from agent import k8s_services
from agent.errors import BadRequest, NotFound

_trace_lock = threading.Lock()
_trace_users = [0]


def handle(api, method, parts, query, body):
    svc = api.services
    if parts == [] and method == "GET":
        return 200, api.worker.submit(svc.list)
    if parts == [] and method == "PUT":
        if not isinstance(body, dict) or not isinstance(body.get("services"), list):
            raise BadRequest("service update needs {'services': [...]}")
        return 200, {"services": api.worker.submit(svc.upsert, body["services"], wait=300.0)}
    if parts == ["import"] and method == "POST":
        if not isinstance(body, dict) or not isinstance(body.get("files"), list):
            raise BadRequest("service import needs {'files': [{'source', 'text'}, ...]}")
        services = k8s_services.parse_files(body["files"])
        done = api.worker.submit(svc.upsert, services, wait=300.0)
        return 200, {"services": len(done), "names": len({s["name"] for s in done})}
    if parts == [] and method == "DELETE":
        if not (query.get("frontend") or query.get("name") or query.get("all") == "1"):
            raise BadRequest("service delete needs ?frontend=IP:PORT[/PROTO], ?name=NS/NAME or ?all=1")
        deleted = api.worker.submit(svc.delete, query.get("frontend"), query.get("name"),
                                    query.get("all") == "1")
        return 200, {"deleted": deleted}
    if parts == ["bpf"] and method == "GET":
        return 200, api.worker.submit(api.datapath.lb.entries)
    raise NotFound("no route for %s /v1/services/%s" % (method, "/".join(parts)))


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
