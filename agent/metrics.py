"""Prometheus metrics of the agent, served on `metrics-address` (loopback by default).

Two kinds: CNI operations are counted and timed as the API serves them
(verb from the plugin's X-CNI-Command header, so `cilium-cni endpoint
delete` is not a DEL); everything else is read when Prometheus scrapes, from
the agent's own state and the pinned maps, so a scrape can never disagree
with `cilium-cni status`. Other parts of the agent add their own families
with `add_source(fn)` (fn() yields prometheus_client metric families); the
service manager (`agent.services`) is read through its `metrics_families()`
if it has that method, else its `list()` is counted (services, backends);
with `kvstore: etcd`, the cluster's `status()` gives the kvstore_* families
(reachable, latency, pending writes, revision, nodes, watch events, re-lists).

Datapath counters are sums over the endpoints that exist: an endpoint's
counters leave the map with it, which Prometheus sees as a counter reset.
Imported only by the agent: never on the plugin's path.
"""

import threading
import time

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import start_http_server

PREFIX = "cilium_cni_"
VERBS = ("ADD", "DEL", "CHECK", "GC", "STATUS")
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def identity_kind(number):
    if number < 256:
        return "reserved"
    if number >= 1 << 24:
        return "cidr"
    return "endpoint"


class Metrics:
    """`agent` gives: manager, enforcement, datapath, started, version, and
    optionally services."""

    def __init__(self, agent):
        disable_created_metrics()  # no *_created series (process-wide: agent only)
        self.agent = agent
        self.registry = CollectorRegistry(auto_describe=False)
        self.operations = Counter(
            PREFIX + "operations", "CNI operations served by the agent, by verb and result.",
            ["verb", "result"], registry=self.registry)
        self.latency = Histogram(
            PREFIX + "operation_duration_seconds",
            "Time the agent took to serve a CNI operation, by verb and result.",
            ["verb", "result"], buckets=BUCKETS, registry=self.registry)
        self._sources = []
        self.registry.register(_StateCollector(self))
        self._server = None
        self.address = None

    def observe(self, verb, status, seconds):
        """One CNI operation answered with HTTP `status` after `seconds`."""
        verb = verb.upper()
        if verb not in VERBS:
            verb = "other"
        ok = status < 400 or (verb == "DEL" and status == 404)  # DEL of the unknown is done
        result = "success" if ok else "error"
        self.operations.labels(verb, result).inc()
        self.latency.labels(verb, result).observe(seconds)

    def add_source(self, fn):
        self._sources.append(fn)

    def serve(self, host, port):
        """Listen on host:port (0 = any free port); returns 'host:port' bound."""
        server, _thread = start_http_server(port, host, self.registry)
        self._server = server
        bound_port = server.server_address[1]
        self.address = ("[%s]:%d" if ":" in host else "%s:%d") % (host, bound_port)
        return self.address

    def close(self):
        if self._server is not None:
            server, self._server = self._server, None
            threading.Thread(target=server.shutdown, daemon=True).start()
            server.server_close()


class _StateCollector:
    def __init__(self, metrics):
        self.m = metrics

    def collect(self):
        agent = self.m.agent
        yield _gauge("agent_info", "The agent's version (value 1).", [({"version": agent.version},
                                                                       1)])
        yield _gauge("agent_uptime_seconds", "Seconds since the agent started.",
                     [({}, time.time() - agent.started)])
        health = agent.manager.health()
        yield _gauge("endpoints", "Endpoints by state (healthy: programs attached, map entry "
                     "present).", [({"state": s}, len(health[s])) for s in ("healthy", "unhealthy")])
        kinds = {"reserved": 0, "endpoint": 0, "cidr": 0}
        for number in agent.enforcement.identities.all():
            kinds[identity_kind(number)] += 1
        yield _gauge("identities", "Security identities known to the node, by kind.",
                     [({"kind": k}, v) for k, v in kinds.items()])
        repo = agent.enforcement.repo
        yield _gauge("policy_rules", "CiliumNetworkPolicy rules in force.",
                     [({}, len(repo.rules()))])
        yield _gauge("policy_revision", "Policy revision (bumped by every change).",
                     [({}, repo.revision)])
        yield from self._services(agent)
        yield from self._kvstore(getattr(agent, "cluster", None))
        yield from self._datapath(agent.datapath)
        for fn in list(self.m._sources):
            yield from fn()

    @staticmethod
    def _services(agent):
        services = getattr(agent, "services", None)
        if services is None:
            return
        families = getattr(services, "metrics_families", None)
        if families is not None:
            yield from families()
            return
        try:
            rows = services.list()
        except RuntimeError:  # changed while read (not on the worker): next scrape
            return
        yield _gauge("services", "Services (frontends) known to the agent.", [({}, len(rows))])
        yield _gauge("service_backends", "Backends over all services.",
                     [({}, sum(len(s.get("backends") or ()) for s in rows))])

    @staticmethod
    def _kvstore(cluster):
        """The same view as `status` (one etcd status call per scrape,
        bounded by kvstore-timeout-seconds); nothing without a kvstore."""
        if cluster is None:
            return
        kv = cluster.status()
        yield _gauge("kvstore_reachable", "1 when etcd answered this scrape's status call.",
                     [({}, 1 if kv["reachable"] else 0)])
        if kv["latencyMs"] is not None:
            yield _gauge("kvstore_latency_seconds", "Round trip of that status call to etcd.",
                         [({}, kv["latencyMs"] / 1000.0)])
        yield _gauge("kvstore_pending_writes", "Keys of this node not yet written to etcd "
                     "(retried while etcd is away).", [({}, kv["pendingWrites"])])
        yield _gauge("kvstore_revision", "The etcd revision applied on this node.",
                     [({}, kv["revision"])])
        yield _gauge("kvstore_nodes", "Nodes of the cluster seen in etcd.", [({}, kv["nodes"])])
        events = CounterMetricFamily(PREFIX + "kvstore_watch_events",
                                     "Changes received from the etcd watch.")
        events.add_metric([], kv["watchEvents"])
        relists = CounterMetricFamily(PREFIX + "kvstore_relists",
                                      "Full listings after the watch's revision was compacted.")
        relists.add_metric([], kv["relists"])
        yield from (events, relists)

    @staticmethod
    def _datapath(datapath):
        totals = datapath.metrics.totals()
        fwd = CounterMetricFamily(PREFIX + "forwarded_packets",
                                  "Packets the endpoint programs passed, by direction of the pod.",
                                  labels=["direction"])
        fwd_bytes = CounterMetricFamily(PREFIX + "forwarded_bytes",
                                        "Bytes the endpoint programs passed, by direction.",
                                        labels=["direction"])
        drops = CounterMetricFamily(PREFIX + "drops", "Packets dropped, by direction and reason.",
                                    labels=["direction", "reason"])
        for (direction, reason), (packets, nbytes) in sorted(totals.items()):
            if reason == "forwarded":
                fwd.add_metric([direction], packets)
                fwd_bytes.add_metric([direction], nbytes)
            else:
                drops.add_metric([direction, reason], packets)
        yield from (fwd, fwd_bytes, drops)
        pressure = datapath.map_pressure()
        entries = GaugeMetricFamily(PREFIX + "map_entries", "Entries in each pinned map.",
                                    labels=["map"])
        capacity = GaugeMetricFamily(PREFIX + "map_capacity", "max_entries of each pinned map.",
                                     labels=["map"])
        ratio = GaugeMetricFamily(PREFIX + "map_pressure", "Entries / capacity of each map.",
                                  labels=["map"])
        for name, (count, cap) in sorted(pressure.items()):
            entries.add_metric([name], count)
            capacity.add_metric([name], cap)
            ratio.add_metric([name], count / cap if cap else 0.0)
        yield from (entries, capacity, ratio)


def _gauge(name, doc, samples):
    labels = sorted({k for s, _ in samples for k in s})
    family = GaugeMetricFamily(PREFIX + name, doc, labels=labels)
    for sample_labels, value in samples:
        family.add_metric([sample_labels[k] for k in labels], value)
    return family
