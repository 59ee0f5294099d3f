"""Kubernetes `Service` + `EndpointSlice` (discovery.k8s.io/v1) or `Endpoints`
(v1) YAML -> service dicts for `ServiceManager.upsert`.

Each Service port becomes one frontend per cluster IP (ClusterIP), and for
type NodePort/LoadBalancer also a NodePort frontend on the unspecified
address (`0.0.0.0:NODEPORT`, every node address). Backends are the ready
endpoint addresses with the endpoint port of the same port name (an
EndpointSlice's own port list, or an Endpoints subset's). Headless services
(clusterIP None) and ExternalName services have no frontend and are
skipped; SCTP ports are refused (the datapath balances TCP and UDP only).
Errors name the file and the object. Does not: talk to an API server.
"""

import ipaddress

import yaml

from agent.errors import BadRequest

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
# libyaml's safe loader parses 10,000 services in ~1 s, the pure-Python one in ~10 s
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _err(source, obj, why):
    meta = obj.get("metadata") or {} if isinstance(obj, dict) else {}
    return BadRequest("%s: %s %s/%s: %s" % (source, obj.get("kind") if isinstance(obj, dict) else "?",
                                            meta.get("namespace", "default"), meta.get("name", "?"),
                                            why))


def _ident(obj):
    meta = obj.get("metadata") or {}
    return "%s/%s" % (meta.get("namespace") or "default", meta.get("name"))


def parse_files(files):
    """[{source, text}] -> list of service dicts; BadRequest on the first problem."""
    services, slices = {}, {}
    for f in files:
        if not isinstance(f, dict) or not isinstance(f.get("source"), str) \
                or not isinstance(f.get("text"), str):
            raise BadRequest("service import: each file needs 'source' and 'text' strings")
        source = f["source"]
        try:
            docs = [d for d in yaml.load_all(f["text"], Loader=_LOADER) if d is not None]
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = "%s:%d" % (source, mark.line + 1) if mark else source
            raise BadRequest("%s: not YAML: %s" % (where, getattr(exc, "problem", exc))) from None
        for doc in docs:
            for obj in (doc.get("items") or []) if isinstance(doc, dict) and doc.get("kind") == "List" \
                    else [doc]:
                _collect(source, obj, services, slices)
    out = []
    for ident, (source, svc) in services.items():
        out += _frontends(source, svc, slices.get(ident, []))
    return out


def _collect(source, obj, services, slices):
    if not isinstance(obj, dict) or not isinstance(obj.get("metadata"), dict) \
            or not obj["metadata"].get("name"):
        raise BadRequest("%s: a document without kind and metadata.name" % source)
    kind = obj.get("kind")
    if kind == "Service":
        services[_ident(obj)] = (source, obj)
    elif kind == "EndpointSlice":
        name = (obj["metadata"].get("labels") or {}).get(SERVICE_NAME_LABEL)
        if not name:
            raise _err(source, obj, "no label %s" % SERVICE_NAME_LABEL)
        ns = obj["metadata"].get("namespace") or "default"
        slices.setdefault("%s/%s" % (ns, name), []).append(_from_slice(source, obj))
    elif kind == "Endpoints":
        slices.setdefault(_ident(obj), []).extend(_from_endpoints(source, obj))
    else:
        raise _err(source, obj, "unsupported kind (want Service, EndpointSlice or Endpoints)")


def _ports(source, obj, ports):
    out = {}
    for p in ports or []:
        if not isinstance(p, dict) or not isinstance(p.get("port"), int):
            raise _err(source, obj, "every port needs a numeric 'port'")
        out[(p.get("name") or "", (p.get("protocol") or "TCP").upper())] = p["port"]
    return out


def _from_slice(source, obj):
    """(ports {(name, proto): port}, [addresses]) of the ready endpoints."""
    addrs = []
    for ep in obj.get("endpoints") or []:
        if (ep.get("conditions") or {}).get("ready") is False:
            continue
        addrs += list(ep.get("addresses") or [])
    return _ports(source, obj, obj.get("ports")), addrs


def _from_endpoints(source, obj):
    return [(_ports(source, obj, sub.get("ports")), [a.get("ip") for a in sub.get("addresses") or []])
            for sub in obj.get("subsets") or []]


def _frontends(source, obj, endpoint_sets):
    spec = obj.get("spec") or {}
    kind = spec.get("type") or "ClusterIP"
    if kind == "ExternalName":
        return []
    ips = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
    if not ips or ips == ["None"]:
        return []  # headless: no frontend to balance
    name = _ident(obj)
    out = []
    for port in spec.get("ports") or []:
        if not isinstance(port, dict) or not isinstance(port.get("port"), int):
            raise _err(source, obj, "every port needs a numeric 'port'")
        proto = (port.get("protocol") or "TCP").upper()
        if proto not in ("TCP", "UDP"):
            raise _err(source, obj, "protocol %s is not supported (TCP and UDP are)" % proto)
        pname = port.get("name") or ""
        backends = []
        for ports, addrs in endpoint_sets:
            target = ports.get((pname, proto))
            if target is None:
                continue
            for a in addrs:
                entry = "[%s]:%d" % (a, target) if ":" in str(a) else "%s:%d" % (a, target)
                if entry not in backends:
                    backends.append(entry)
        for ip in ips:
            try:
                family = ipaddress.ip_address(ip).version
            except ValueError:
                raise _err(source, obj, "invalid clusterIP '%s'" % ip) from None
            fam_backends = [b for b in backends if (b.startswith("[")) == (family == 6)]
            host = "[%s]" % ip if family == 6 else ip
            out.append({"frontend": "%s:%d/%s" % (host, port["port"], proto.lower()),
                        "type": "ClusterIP", "name": name, "backends": fam_backends})
            if kind in ("NodePort", "LoadBalancer") and port.get("nodePort"):
                any_addr = "[::]" if family == 6 else "0.0.0.0"
                out.append({"frontend": "%s:%d/%s" % (any_addr, port["nodePort"], proto.lower()),
                            "type": "NodePort", "name": name, "backends": fam_backends})
    return out
