"""The agent as one node of a cluster that shares etcd (`kvstore: etcd`).

What it adds to the one-node agent, and where each part lives:

- identities allocated cluster-wide (`identities.ClusterIdentities`, in
  `Enforcement` in place of the local allocator);
- this node's keys under its lease (`node.Publisher`): the node entry, its
  pods' ipcache entries (`publish_endpoint`), its identity use keys;
- every other node's keys applied here (`sync.Sync` and the handlers
  below): identities into the selector cache, other nodes' pod addresses
  into the ipcache (below this node's own claims: `agent.ipcache`),
  policy sources into the repository, services into the service manager,
  nodes into `node list`;
- identity garbage collection by one node at a time (`node.IdentityCollector`).

Start-up order (`connect`, `first_sync`, then the agent restores its
endpoints, then `run`): endpoints are regenerated only after identities,
ipcache, policy and services have been listed from etcd once; until then
the pinned maps keep enforcing what they held.
"""

import ipaddress
import socket
import threading
import time

from agent.errors import BadRequest, KvstoreUnavailable
from agent.ipcache import REMOTE
from agent.kvstore import layout
from agent.kvstore.etcd import Etcd, KvstoreError
from agent.kvstore.identities import ClusterIdentities
from agent.kvstore.node import IdentityCollector, Publisher
from agent.kvstore.sync import Sync
from datapath.errors import DatapathError

SHARED = "kvstore:"  # policy sources from etcd are named kvstore:<source> on the node
WAIT_LOG_SECONDS = 5.0


def node_name(config):
    return layout.check_node_name(config.node_name or socket.gethostname().lower())


class Cluster:
    def __init__(self, config, local_identities, log):
        self.config = config
        self.node = node_name(config)
        self.log = log
        self.keys = layout.Layout(config.kvstore_prefix)
        self.etcd = Etcd(config.kvstore_endpoints, config.kvstore_ca_file,
                         config.kvstore_cert_file, config.kvstore_key_file,
                         config.kvstore_timeout_seconds, log)
        self.publisher = Publisher(self.etcd, config.state_dir, config.kvstore_lease_ttl, log)
        self.identities = ClusterIdentities(self.etcd, self.keys, self.node, self.publisher,
                                            local_identities, config.identity_grace_seconds,
                                            log=log)
        self.collector = IdentityCollector(self.etcd, self.keys, self.node, self.publisher,
                                           config.identity_grace_seconds, log)
        self.nodes = {}          # name -> node entry
        self.policy_revision = 0
        self.enforcement = None  # set by attach()
        self.services = None
        self._remote = {}        # prefix -> (identity, node) claimed from etcd
        self._unplaced = {}      # prefix -> (identity, node) of a node not (yet) known
        self._unwritten = set()  # remote prefixes the ipcache map had no room for
        self._sync = None
        self._stop = threading.Event()
        self.started_at = time.time()

    def attach(self, enforcement, services, worker):
        self.enforcement, self.services = enforcement, services
        self._submit = worker.submit
        enforcement.cluster = self
        if services is not None:
            services.cluster = self
        k = self.keys
        # nodes first: an ip entry is taken only from a node of the cluster
        self._sync = Sync(self.etcd, k.root, [
            (k.nodes, self._nodes_changed),
            (k.identities, self._identities_changed),
            (k.ip, self._ip_changed),
            (k.sources, self._sources_changed),
            (k.policy_revision, self._revision_changed),
            (k.services, self._services_changed),
        ], worker.submit, self.log, observe=self._reassert)

    # --- start-up ---

    def connect(self, stop=None):
        """Take the lease and list everything once, waiting for etcd as long
        as it takes (logging why every few seconds): the agent must not
        regenerate endpoints from a partial view."""
        stop = stop or self._stop
        last_log = 0.0
        while True:
            try:
                self.publisher.open_lease()
                count = self._sync.list_once()
                break
            except KvstoreError as exc:
                now = time.monotonic()
                if now - last_log >= WAIT_LOG_SECONDS:
                    self.log.warning("waiting for etcd (kvstore-endpoints %s): %s; endpoints "
                                     "keep their pinned enforcement meanwhile",
                                     ",".join(self.config.kvstore_endpoints), exc)
                    last_log = now
                if stop.wait(1.0):
                    raise
        self.log.info("kvstore: node %s joined etcd at %s: %d key(s) at revision %d, lease %x%s",
                      self.node, ",".join(self.config.kvstore_endpoints), count,
                      self._sync.revision, self.publisher.lease,
                      " (kept from the previous run)" if self.publisher.reused_lease else "")
        self._submit(self._drop_vanished)
        # Wanted before any endpoint's keys: the publisher writes in order,
        # and other nodes take ip entries only from nodes they know.
        self.publisher.want(self.keys.node_key(self.node), layout.encode({
            "name": self.node, "addresses": self._addresses(),
            "podCIDRs": list(self.config.node_pod_cidrs), "version": _version(),
            "startedAt": round(self.started_at, 3)}))
        return count

    def _drop_vanished(self):
        """Shared policy sources and services this node kept from a previous
        run that are gone from etcd (deleted while it was down). On the
        worker, after the first listing."""
        listed = {s for _, s in self._listed(self.keys.sources)}
        gone = [s for s in self.enforcement.shared_sources() if s[len(SHARED):] not in listed]
        if gone:
            self.enforcement.apply_shared_sources({s: None for s in gone})
            self.log.info("kvstore: %d shared policy source(s) deleted while this agent was "
                          "down removed: %s", len(gone), ", ".join(sorted(gone)))
        if self.services is not None:
            listed = {s for _, s in self._listed(self.keys.services)}
            stale = [k for k in self.services.keys() if k not in listed]
            if stale:
                self.services.apply_shared({k: None for k in stale})

    def _listed(self, prefix):
        return [(k, k[len(prefix):]) for k in self._sync.keys() if k.startswith(prefix)]

    def run(self, stop):
        """After the endpoints are restored: publish this node, drop keys
        of a previous run nobody wants, watch, collect identities."""
        self._stop = stop
        self.publisher.start()
        if self.publisher.reused_lease:
            self.publisher.flush(5.0)
            try:
                pruned = self.publisher.prune()
                if pruned:
                    self.log.info("kvstore: %d key(s) of the previous run removed", pruned)
            except KvstoreError as exc:
                self.log.warning("kvstore: cannot prune keys of the previous run: %s", exc)
        self._sync.start_watch()
        threading.Thread(target=self._collect, name="kvstore-gc", daemon=True).start()

    def _collect(self):
        interval = max(1.0, min(30.0, self.config.identity_grace_seconds / 2.0))
        while not self._stop.wait(interval):
            if self._unwritten:
                self._submit(self.retry_unwritten)
            try:
                self.collector.run_once()
            except KvstoreError as exc:
                self.log.debug("kvstore: identity collection skipped: %s", exc)
            except Exception:
                self.log.exception("kvstore: identity collection failed")

    def close(self):
        self._stop.set()
        if self._sync is not None:
            self._sync.stop()
        self.publisher.stop()
        self.etcd.close()

    def _addresses(self):
        if self.config.node_addresses:
            return list(self.config.node_addresses)
        from datapath.netns import host_prefixes
        return sorted(p for p in host_prefixes() if not p.startswith(("127.", "::1/")))

    # --- what this node publishes ---

    def publish_endpoint(self, prefixes, identity):
        value = layout.encode({"identity": identity, "node": self.node})
        for prefix in prefixes:
            self.publisher.want(self.keys.ip_key(prefix), value)

    def withdraw_endpoint(self, prefixes):
        for prefix in prefixes:
            self.publisher.unwant(self.keys.ip_key(prefix))

    def publish_sources(self, texts):
        """{source: text or None} into etcd in one transaction with the
        policy revision; raises KvstoreUnavailable when etcd does not take it."""
        for source, text in texts.items():
            if text is not None and len(text.encode()) > layout.MAX_VALUE:
                raise BadRequest("policy source %s is %d bytes; a source shared through etcd "
                                 "may hold at most %d: split it into several files" % (
                                     source, len(text.encode()), layout.MAX_VALUE))
        for _ in range(8):
            try:
                current = self.etcd.get(self.keys.policy_revision)
                revision = layout.read_revision(current.value) if current else 0
            except ValueError:
                revision = 0
            except KvstoreError as exc:
                raise KvstoreUnavailable("cannot share the policy through etcd: %s" % exc) from None
            ops = [self.etcd.op_put(self.keys.policy_revision, layout.encode({"revision": revision + 1}))]
            for source, text in texts.items():
                key = self.keys.source_key(source)
                ops.append(self.etcd.op_delete(key) if text is None else
                           self.etcd.op_put(key, layout.encode({"text": text})))
            compare = ([self.etcd.when_value(self.keys.policy_revision, current.value)] if current
                       else [self.etcd.when_absent(self.keys.policy_revision)])
            try:
                ok, _ = self.etcd.txn(compare, ops)
            except KvstoreError as exc:
                raise KvstoreUnavailable("cannot share the policy through etcd: %s" % exc) from None
            if ok:
                self.policy_revision = revision + 1
                return self.policy_revision
        raise KvstoreUnavailable("policy revision in etcd kept changing; try again")

    def publish_services(self, services):
        """{frontend key: service or None} into etcd in one transaction."""
        ops = []
        for key, svc in services.items():
            k = self.keys.service_key(key)
            if svc is None:
                ops.append(self.etcd.op_delete(k))
            else:
                shared = {f: v for f, v in svc.items() if f != "id"}
                ops.append(self.etcd.op_put(k, layout.encode({"service": shared})))
        try:
            for start in range(0, len(ops), 128):  # etcd's max-txn-ops
                self.etcd.txn([], ops[start:start + 128])
        except KvstoreError as exc:
            raise KvstoreUnavailable("cannot share the services through etcd: %s" % exc) from None

    def _reassert(self, changes):
        for kind, key, value, _ in changes:
            if self.publisher.reassert(key, value if kind == "put" else None):
                self.log.warning("kvstore: %s, a key of this node, was %s by another writer; "
                                 "written again", key, "changed" if kind == "put" else "deleted")

    # --- what other nodes publish (worker thread) ---

    def _bad(self, prefix, tail, exc):
        self.log.warning("kvstore: skipped %s%s: %s", prefix, tail, exc)

    def _identities_changed(self, changes):
        added, removed = self.identities.apply(changes)
        if added or removed:
            self.enforcement.cache.update_identities(added=added, removed=removed)

    def _ip_changed(self, changes):
        ipcache = self.enforcement.ipcache
        for kind, tail, raw, _ in changes:
            if kind == "delete":
                self._unplaced.pop(tail, None)
                self._unwritten.discard(tail)
                if self._remote.pop(tail, None) is not None:
                    ipcache.release(tail, "remote")
                continue
            try:
                prefix, identity, node = layout.read_ip(tail, raw)
            except ValueError as exc:
                self._bad(self.keys.ip, tail, exc)
                continue
            if node == self.node:
                continue  # our own: claimed locally, with more weight
            problem = self._misplaced(prefix, node)
            if problem:
                # skipped, and what the key held before stays in force (its
                # owner writes it again: `Publisher.reassert`)
                self._bad(self.keys.ip, tail, problem)
                if prefix not in self._remote:
                    self._unplaced[prefix] = (identity, node)
                continue
            self._unplaced.pop(prefix, None)
            self._remote[prefix] = (identity, node)
            self._claim_remote(prefix, identity)
        self._report_unwritten()

    def _claim_remote(self, prefix, identity):
        """Claim; a map that is full loses this entry, not the rest of the
        batch: it is written again when there is room (`retry_unwritten`)."""
        try:
            self.enforcement.ipcache.claim(prefix, "remote", REMOTE, identity)
            self._unwritten.discard(prefix)
        except DatapathError:
            self._unwritten.add(prefix)

    def _report_unwritten(self):
        if self._unwritten:
            self.log.error("kvstore: %d address(es) of other nodes' pods are not in the ipcache "
                           "map (full?): traffic with them is treated as world until there is "
                           "room; retried every few seconds", len(self._unwritten))

    def retry_unwritten(self):
        for prefix in list(self._unwritten):
            if prefix not in self._remote:
                self._unwritten.discard(prefix)
                continue
            try:
                self.enforcement.ipcache.resync(prefix)
                self._unwritten.discard(prefix)
            except DatapathError:
                break
        self._report_unwritten()

    def _misplaced(self, prefix, node):
        """Why an ip entry cannot be taken: its node is not a node of the
        cluster, or the address is outside the pod CIDRs the node declared."""
        entry = self.nodes.get(node)
        if entry is None:
            return "node '%s' is not a node of the cluster" % node
        cidrs = entry.get("podCIDRs") or []
        if cidrs and not any(ipaddress.ip_network(prefix).subnet_of(ipaddress.ip_network(c))
                             for c in cidrs if ipaddress.ip_network(c).version ==
                             ipaddress.ip_network(prefix).version):
            return "%s is outside the pod CIDRs of node %s (%s)" % (prefix, node, ", ".join(cidrs))
        return None

    def _nodes_changed(self, changes):
        for kind, tail, raw, _ in changes:
            if kind == "delete":
                self.nodes.pop(tail, None)
                continue
            try:
                self.nodes[tail] = layout.read_node(tail, raw)
            except ValueError as exc:
                self._bad(self.keys.nodes, tail, exc)
                continue
            # entries that came before their node (or before it was valid)
            waiting = [(p, v) for p, v in self._unplaced.items() if v[1] == tail]
            for prefix, (identity, node) in waiting:
                if not self._misplaced(prefix, node):
                    del self._unplaced[prefix]
                    self._remote[prefix] = (identity, node)
                    self._claim_remote(prefix, identity)

    def _sources_changed(self, changes):
        texts = {}
        for kind, tail, raw, _ in changes:
            if kind == "delete":
                texts[SHARED + tail] = None
                continue
            try:
                source, text = layout.read_source(tail, raw)
            except ValueError as exc:
                self._bad(self.keys.sources, tail, exc)
                continue
            texts[SHARED + source] = text
        if texts:
            refused = self.enforcement.apply_shared_sources(texts)
            for source, why in refused.items():
                self._bad(self.keys.sources, source[len(SHARED):], why)

    def _revision_changed(self, changes):
        for kind, _, raw, _ in changes:
            if kind == "put":
                try:
                    self.policy_revision = layout.read_revision(raw)
                except ValueError as exc:
                    self._bad(self.keys.policy_revision, "", exc)

    def _services_changed(self, changes):
        if self.services is None:
            return
        update = {}
        for kind, tail, raw, _ in changes:
            if kind == "delete":
                update[tail] = None
                continue
            try:
                _, svc = layout.read_service(tail, raw)
            except ValueError as exc:
                self._bad(self.keys.services, tail, exc)
                continue
            update[tail] = svc
        if update:
            for key, why in self.services.apply_shared(update).items():
                self._bad(self.keys.services, key, why)

    # --- views ---

    def node_list(self):
        """The nodes as this node last saw them: 'alive' (their lease holds
        their entry), or 'unknown' while this node's own calls to etcd fail
        (its view may be stale)."""
        stale = self.etcd.last_error() is not None
        return [{**entry, "self": name == self.node, "health": "unknown" if stale else "alive"}
                for name, entry in sorted(self.nodes.items())]

    def status(self):
        health = self.etcd.health()
        sync = self._sync
        return {
            "backend": "etcd", "node": self.node, "prefix": self.keys.root,
            **health,
            "lease": "%x" % self.publisher.lease if self.publisher.lease else None,
            "pendingWrites": self.publisher.pending(),
            "revision": sync.revision if sync else 0,
            "syncedAt": sync.synced_at if sync else None,
            "watchEvents": sync.events if sync else 0,
            "relists": sync.relists if sync else 0,
            "gcLeader": self.collector.leader,
            "nodes": len(self.nodes),
            "policyRevision": self.policy_revision,
        }


def _version():
    from cni import __version__
    return __version__
