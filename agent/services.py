"""Services: frontends -> backends, validated, persisted, written to the datapath.

A service is one frontend (address, port, protocol) with a type (ClusterIP,
NodePort, HostPort) and weighted backends (address, port, weight); services
imported from Kubernetes also carry the name `namespace/name`, which several
frontends share (one per port, plus NodePort frontends). Every change is a
batch: all of it is checked before anything is written (a bad address, a
port out of range, the same frontend twice, a frontend whose address and
port another service already uses with another protocol), then the store and
the maps are updated for the changed services only. In a cluster
(`cluster` set, `agent.kvstore.cluster`) every change made here is written
to etcd first (nothing is applied if etcd does not take it), and other
nodes' changes arrive through `apply_shared`, checked like any other input.
Runs on the agent's worker thread. Does not: parse Kubernetes YAML (`k8s_services`) or encode
map bytes (`datapath.maps.lb`).
"""

import ipaddress

from agent.errors import BadRequest, NotFound

TYPES = ("ClusterIP", "NodePort", "HostPort")
PROTOCOLS = ("tcp", "udp")
MAX_WEIGHT = 100
MAX_SLOTS = 4096  # sum of weights of one service (datapath slots)


def parse_hostport(text, what):
    """'10.0.0.1:80' or '[fd00::1]:80' -> (address, port); BadRequest names `what`."""
    text = text.strip()
    if text.startswith("["):
        addr, sep, port = text[1:].partition("]:")
    else:
        addr, sep, port = text.rpartition(":")
    if not sep or not addr:
        raise BadRequest("invalid %s '%s': want IP:PORT ([IPv6]:PORT)" % (what, text))
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        raise BadRequest("invalid %s '%s': '%s' is not an IP address" % (what, text, addr)) from None
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise BadRequest("invalid %s '%s': port must be 1-65535" % (what, text))
    return str(ip), int(port)


def frontend_key(address, port, protocol):
    ip = ipaddress.ip_address(address)
    host = "[%s]" % ip if ip.version == 6 else str(ip)
    return "%s:%d/%s" % (host, port, protocol)


def parse_frontend_text(text):
    """'IP:PORT[/tcp|/udp]' -> (address, port, protocol)."""
    base, _, proto = text.partition("/")
    proto = (proto or "tcp").lower()
    if proto not in PROTOCOLS:
        raise BadRequest("invalid frontend '%s': protocol must be tcp or udp" % text)
    address, port = parse_hostport(base, "frontend")
    return address, port, proto


def normalize(svc):
    """Check one service (a dict from the API) and return it in canonical form."""
    if not isinstance(svc, dict):
        raise BadRequest("a service must be a JSON object, not %r" % (svc,))
    fe = svc.get("frontend")
    if isinstance(fe, str):
        address, port, proto = parse_frontend_text(fe)
    elif isinstance(fe, dict):
        address, port = parse_hostport("%s:%s" % (_bracket(fe.get("address")), fe.get("port")),
                                       "frontend")
        proto = str(fe.get("protocol", "tcp")).lower()
        if proto not in PROTOCOLS:
            raise BadRequest("invalid frontend protocol '%s': want tcp or udp" % fe.get("protocol"))
    else:
        raise BadRequest("a service needs a 'frontend' (IP:PORT[/proto] or an object)")
    key = frontend_key(address, port, proto)
    kind = svc.get("type", "ClusterIP")
    if kind not in TYPES:
        raise BadRequest("service %s: invalid type '%s' (want %s)" % (key, kind, ", ".join(TYPES)))
    family = ipaddress.ip_address(address).version
    if ipaddress.ip_address(address).is_unspecified and kind != "NodePort":
        raise BadRequest("service %s: only a NodePort frontend may use the unspecified address"
                         % key)
    name = svc.get("name")
    if name is not None and (not isinstance(name, str) or not name or len(name) > 253):
        raise BadRequest("service %s: invalid name %r (want NAMESPACE/NAME)" % (key, name))
    backends = svc.get("backends", [])
    if isinstance(backends, str):
        backends = [b for b in backends.split(",") if b.strip()]
    if not isinstance(backends, list):
        raise BadRequest("service %s: 'backends' must be a list" % key)
    out, seen = [], set()
    for b in backends:
        baddr, bport, weight = _backend(b, key)
        if ipaddress.ip_address(baddr).version != family:
            raise BadRequest("service %s: backend %s is not of the frontend's address family"
                             % (key, frontend_key(baddr, bport, proto)[:-4]))
        if (baddr, bport) in seen:
            raise BadRequest("service %s: backend %s listed twice" % (key, _hp(baddr, bport)))
        seen.add((baddr, bport))
        out.append({"address": baddr, "port": bport, "weight": weight})
    if sum(b["weight"] for b in out) > MAX_SLOTS:
        raise BadRequest("service %s: backend weights add up to more than %d" % (key, MAX_SLOTS))
    return {"frontend": {"address": address, "port": port, "protocol": proto}, "key": key,
            "type": kind, "name": name, "backends": out}


def _bracket(address):
    return "[%s]" % address if isinstance(address, str) and ":" in address else address


def _hp(address, port):
    return "%s:%d" % (_bracket(address), port)


def _backend(b, key):
    if isinstance(b, str):
        text, _, weight = b.strip().partition("@")
        address, port = parse_hostport(text, "backend of %s" % key)
        weight = weight or "1"
    elif isinstance(b, dict):
        address, port = parse_hostport("%s:%s" % (_bracket(b.get("address")), b.get("port")),
                                       "backend of %s" % key)
        weight = b.get("weight", 1)
    else:
        raise BadRequest("service %s: invalid backend %r" % (key, b))
    try:
        weight = int(weight)
    except (TypeError, ValueError):
        weight = -1
    if isinstance(b, dict) and isinstance(b.get("weight"), bool) or not 0 <= weight <= MAX_WEIGHT:
        raise BadRequest("service %s: backend %s weight must be 0-%d" % (key, _hp(address, port),
                                                                           MAX_WEIGHT))
    return address, port, weight


class ServiceManager:
    """The services of the node; `datapath.lb` writes them into the maps."""

    def __init__(self, store, datapath, log):
        self._store = store
        self._dp = datapath
        self._log = log
        self._services = {}  # frontend key -> service (with "id")
        self._by_hostport = {}  # (address, port) -> frontend keys (the protocol clash check)
        self._ids = set()
        self.cluster = None

    # --- views ---

    def keys(self):
        return list(self._services)

    def list(self):
        return [dict(s) for _, s in sorted(self._services.items())]

    def get(self, key):
        try:
            return dict(self._services[key])
        except KeyError:
            raise NotFound("no service with frontend %s" % key) from None

    # --- changes ---

    def upsert(self, services, share=True):
        """Add or replace services (all checked first); returns them with ids."""
        if not isinstance(services, list):
            raise BadRequest("services must be a list")
        batch = {}
        for raw in services:
            svc = normalize(raw)
            if svc["key"] in batch:
                raise BadRequest("frontend %s given twice" % svc["key"])
            batch[svc["key"]] = svc
        self._check_protocol_clash(batch)
        used = self._ids
        next_id = 1
        for key, svc in batch.items():
            old = self._services.get(key)
            if old is not None:
                svc["id"] = old["id"]
                continue
            while next_id in used:
                next_id += 1
            if next_id > 0xFFFF:
                raise BadRequest("too many services (the datapath holds 65535)")
            svc["id"] = next_id
            next_id += 1
        changed = {k: s for k, s in batch.items() if self._services.get(k) != s}
        if share and self.cluster is not None and changed:
            self.cluster.publish_services(changed)
        self._store.put_services({k: s for k, s in changed.items()})
        for svc in changed.values():
            self._dp.lb.upsert(svc)
            self._add(svc)
        if changed:
            self._log.info("%d service(s) updated", len(changed))
        return [dict(s) for s in batch.values()]

    def _add(self, svc):
        fe = svc["frontend"]
        self._services[svc["key"]] = svc
        self._by_hostport.setdefault((fe["address"], fe["port"]), set()).add(svc["key"])
        self._ids.add(svc["id"])

    def _remove(self, key):
        svc = self._services.pop(key)
        hp = (svc["frontend"]["address"], svc["frontend"]["port"])
        self._by_hostport[hp].discard(key)
        if not self._by_hostport[hp]:
            del self._by_hostport[hp]
        self._ids.discard(svc["id"])
        return svc

    def _check_protocol_clash(self, batch):
        by_hostport = {}
        for svc in batch.values():
            hp = (svc["frontend"]["address"], svc["frontend"]["port"])
            by_hostport.setdefault(hp, []).append(svc)
        for hp, svcs in by_hostport.items():
            svcs += [self._services[k] for k in self._by_hostport.get(hp, ()) if k not in batch]
        for (address, port), svcs in by_hostport.items():
            names = {s["name"] for s in svcs}
            if len(svcs) > 1 and (len(names) > 1 or None in names):
                protos = sorted(s["frontend"]["protocol"] for s in svcs)
                raise BadRequest("frontend %s is used with protocols %s by different services "
                                 "(%s): one address and port may carry tcp and udp only as one "
                                 "named service" % (_hp(address, port), "/".join(protos),
                                                    ", ".join(sorted(str(n) for n in names))))

    def delete(self, frontend=None, name=None, everything=False):
        """Delete by frontend text, by name (all its frontends), or all."""
        if everything:
            keys = list(self._services)
        elif frontend is not None:
            address, port, proto = parse_frontend_text(frontend)
            keys = [frontend_key(address, port, proto)]
            if keys[0] not in self._services:
                raise NotFound("no service with frontend %s" % keys[0])
        elif name:
            keys = [k for k, s in self._services.items() if s["name"] == name]
            if not keys:
                raise NotFound("no service named '%s'" % name)
        else:
            raise BadRequest("delete needs a frontend, a name or all")
        if self.cluster is not None and keys:
            self.cluster.publish_services({k: None for k in keys})
        return self._drop(keys)

    def _drop(self, keys):
        self._store.put_services({k: None for k in keys})
        for key in keys:
            self._dp.lb.delete(self._remove(key))
        return keys

    def apply_shared(self, update):
        """Services from etcd ({frontend key: service or None}): each checked
        as if it came through the API; a bad one is skipped. Returns
        {frontend key: why} of those skipped."""
        good, refused = [], {}
        for key, svc in update.items():
            if svc is None:
                continue
            try:
                checked = normalize(svc)
                if checked["key"] != key:
                    raise BadRequest("its frontend is %s" % checked["key"])
                self._check_protocol_clash({key: checked})
            except BadRequest as exc:
                refused[key] = exc.message
                continue
            good.append(svc)
        gone = [k for k, svc in update.items() if svc is None and k in self._services]
        if gone:
            self._drop(gone)
        try:
            if good:
                self.upsert(good, share=False)
        except BadRequest:  # one clashes with another: apply those that can be
            for svc in good:
                try:
                    self.upsert([svc], share=False)
                except BadRequest as exc:
                    refused[svc.get("key")] = exc.message
        return refused

    def restore(self):
        """Load stored services and make the pinned maps hold exactly them."""
        self._services, self._by_hostport, self._ids = {}, {}, set()
        for data in self._store.services():
            self._add(data)
        self._dp.lb.sync(list(self._services.values()))
        return len(self._services)


def attach_lb(config, datapath, log, hub=None):
    """NodePort programs on the configured devices, socket hooks on the
    cgroup (when enabled, their events into `hub`); returns the SocketLB
    (None when disabled)."""
    import socket

    from datapath import socklb
    from datapath.errors import DatapathError
    for name in config.nodeport_devices:
        try:
            index = socket.if_nametoindex(name)
        except OSError:
            raise DatapathError("nodeport device '%s' does not exist" % name) from None
        datapath.attach_netdev(index)
        log.info("NodePort programs attached to %s (ifindex %d)", name, index)
    if not config.socket_lb:
        return None
    lb = socklb.SocketLB(datapath, config.cgroup_root)
    lb.load_and_attach()
    if hub is not None:
        lb.start_events(hub.publish, log)
    log.info("socket load-balancing attached to cgroup %s", config.cgroup_root)
    return lb
