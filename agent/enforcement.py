"""Wires identities, the policy engine and the datapath for the agent.

For each endpoint it allocates the identity of its labels, writes the
endpoint's entry (identity + enforcement flags), its addresses into the
ipcache and its policy entries, before the endpoint's programs are
attached (fail closed: an error here fails the ADD). Policy changes
(import, delete, the watched directory) re-resolve every endpoint and
write only the entries that change; a new identity reaches only the
selectors it matches (the selector cache) and only their users' entries.
CIDR prefixes named by policy get node-local identities and ipcache
entries (a /0 is world itself); the host's own addresses map to the host
identity; where several name one prefix, `agent/ipcache.py` decides.

In a cluster (`agent.kvstore.cluster`, set as `cluster`), identities are
allocated in etcd, this node's endpoint addresses are published there,
policy imported through the API is shared (written to etcd first, then
applied here as source `kvstore:<source>`; every node applies it from its
watch), and other nodes' shared sources arrive through
`apply_shared_sources`. The watched policy directory stays node-local.

Runs on the agent's single worker thread (the engine is not thread-safe);
readers get copies.
"""

import ipaddress

from agent import labels as lbl
from agent.errors import BadRequest
from agent.identity import IdentityAllocator
from agent.ipcache import CIDR, ENDPOINT, HOST, IpCache
from agent.logs import pod_fields
from agent.policy.endpoint import EndpointPolicy
from agent.policy.parse import PolicyError, parse_text
from agent.policy.repository import Repository
from agent.policy.rule import EGRESS, INGRESS
from agent.policy.selectorcache import SelectorCache

FLAG_INGRESS, FLAG_EGRESS = 1, 2
SHARED = "kvstore:"  # policy sources shared through etcd are named kvstore:<source>


def host_prefix(address):
    """'10.1.2.3/24' -> '10.1.2.3/32' (the endpoint owns the address, not the subnet)."""
    ip = ipaddress.ip_interface(address).ip
    return "%s/%d" % (ip, ip.max_prefixlen)


def _document(name, namespace, specs):
    meta = {"name": name, **({"namespace": namespace} if namespace else {})}
    body = {"spec": specs[0]} if len(specs) == 1 else {"specs": specs}
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": meta, **body}


def _parse_progress(progress, base, size, total):
    """A file's parse_text progress as characters of the whole import."""
    def step(stage, offset):
        progress(base + offset + (size if stage == "check" else 0), total, "parsing")
    return step


def _remaining_text(rules, source, name, namespace):
    """The YAML of `source` without the rules named (None if none remain)."""
    import yaml
    by = {}
    for rule in rules:
        if rule.source == source and not (rule.name == name and (
                namespace is None or rule.namespace == namespace)):
            by.setdefault((rule.name, rule.namespace), []).append(rule.spec)
    if not by:
        return None
    return yaml.safe_dump_all([_document(n, ns, specs) for (n, ns), specs in by.items()])


def flags_of(enforced):
    return (FLAG_INGRESS if enforced[INGRESS] else 0) | (FLAG_EGRESS if enforced[EGRESS] else 0)


class Enforcement:
    def __init__(self, store, datapath, log, identity_grace=300.0, host_prefixes=None,
                 allow_host=False, identities=None):
        self._store = store
        self._host_prefixes = host_prefixes  # callable -> the node's own /32s and /128s
        self._allow_host = allow_host  # allow-localhost: always
        self._dp = datapath
        self._log = log
        self.identities = identities or IdentityAllocator(store, identity_grace)
        self.cluster = None  # agent.kvstore.cluster.Cluster when clustered
        self.repo = Repository()
        known = {n: lbl.from_canonical(text) for n, text in self.identities.all().items()}
        self.cache = SelectorCache(known)
        self._policies = {}   # endpoint id -> EndpointPolicy
        self._endpoints = {}  # endpoint id -> endpoint dict (identity, host ifindex, addresses)
        self._cidr = {}       # prefix text -> identity
        self._host = set()    # host prefixes in the ipcache
        self.ipcache = IpCache(datapath.ipcache)

    # --- endpoints ---

    def labels_for(self, req):
        try:
            labels = lbl.labels_from_cni_args(req.get("netconfArgs") or {},
                                              (req.get("k8s") or {}).get("namespace"))
        except ValueError as exc:
            raise BadRequest("invalid endpoint labels: %s" % exc) from None
        return labels

    def _acquire(self, labels, cidr=False):
        number, created = self.identities.acquire(lbl.canonical(labels), cidr=cidr)
        if created:
            self.cache.update_identities(added={number: frozenset(labels)})
        return number

    def attach_endpoint(self, ep, labels):
        """Identity, endpoint entry, ipcache and policy: all or nothing."""
        ep_id = ep["id"]
        number = self._acquire(labels)
        ep["identity"] = number
        ep["labels"] = sorted(lbl.format_label(x) for x in labels)
        self._endpoints[ep_id] = ep
        try:
            self._policies[ep_id] = EndpointPolicy(ep_id, labels, self.repo, self.cache,
                                                   self._applier(ep_id), self._allow_host)
            self._write_endpoint(ep)
            self._claim_addresses(ep, number)
        except BaseException:
            self.detach_endpoint(ep)
            raise

    def _claim_addresses(self, ep, number):
        prefixes = [host_prefix(a) for a in ep["interface"]["addresses"]]
        for prefix in prefixes:
            self.ipcache.claim(prefix, ("endpoint", ep["id"]), ENDPOINT, number)
        if self.cluster is not None:
            self.cluster.publish_endpoint(prefixes, number)

    def _write_endpoint(self, ep):
        pol = self._policies[ep["id"]]
        self._dp.endpoints.set(ep["host"]["ifindex"], ep["id"], ep["identity"],
                              flags=flags_of(pol.enforced))

    def _applier(self, ep_id):
        def apply(adds, deletes, enforced):
            self._dp.policy.update(ep_id, adds, deletes)
            ep = self._endpoints.get(ep_id)
            pol = self._policies.get(ep_id)
            if ep is not None and pol is not None:
                self._dp.endpoints.set(ep["host"]["ifindex"], ep_id, ep["identity"],
                                      flags=flags_of(enforced))
        return apply

    def detach_endpoint(self, ep):
        ep_id = ep["id"]
        pol = self._policies.pop(ep_id, None)
        if pol is not None:
            pol.close()
        self._endpoints.pop(ep_id, None)
        prefixes = [host_prefix(a) for a in ep["interface"]["addresses"]]
        for prefix in prefixes:
            self.ipcache.release(prefix, ("endpoint", ep_id))
        if self.cluster is not None:
            self.cluster.withdraw_endpoint(prefixes)
        self._dp.remove_endpoint(ep["host"]["ifindex"], ep_id)
        if ep.get("identity"):
            self.identities.release(ep["identity"])

    def change_labels(self, ep, add, delete):
        current = lbl.parse_labels(ep.get("labels", []))
        try:
            added = lbl.parse_labels(add, default_source=lbl.SOURCE_CNI)
            removed_keys = {lbl.split_source(k, lbl.SOURCE_ANY) for k in delete}
        except ValueError as exc:
            raise BadRequest("invalid label: %s" % exc) from None
        for source, key, value in added:
            if source not in (lbl.SOURCE_CNI, lbl.SOURCE_K8S) or key == lbl.NAMESPACE_KEY:
                raise BadRequest("label '%s': only cni: and k8s: labels other than the pod "
                                 "namespace can be set" % lbl.format_label((source, key, value)))
            try:
                lbl.check_key(key)
                lbl.check_value(value, key)
            except ValueError as exc:
                raise BadRequest(str(exc)) from None
        kept = {x for x in current if not any(
            x[1] == key and src in (lbl.SOURCE_ANY, x[0]) for src, key in removed_keys)}
        kept = {x for x in kept if not any(x[1] == a[1] and x[0] == a[0] for a in added)}
        new = frozenset(kept | added)
        if new == current:
            return ep
        old_identity = ep["identity"]
        number = self._acquire(new)
        ep["identity"] = number
        ep["labels"] = sorted(lbl.format_label(x) for x in new)
        self._policies[ep["id"]].set_labels(new)
        self._write_endpoint(ep)
        self._claim_addresses(ep, number)
        self.identities.release(old_identity)
        self._log.info("endpoint %d labels now %s: identity %d -> %d", ep["id"],
                       ",".join(ep["labels"]), old_identity, number, extra=pod_fields(ep))
        return ep

    # --- policy ---

    def import_files(self, files, progress=None, local=False):
        """Parse every file first; apply only if all parse (nothing partial).

        In a cluster, unless `local` (the watched directory), the files are
        shared: written to etcd in one transaction before they are applied
        here (if etcd does not take them, nothing is applied).

        `progress(done, total, phase)`: "parsing" counts characters of
        policy text, each read as YAML then checked (so total = 2 x size);
        "updating endpoints" counts endpoints."""
        for f in files:
            if not isinstance(f, dict) or not isinstance(f.get("source"), str) \
                    or not isinstance(f.get("text"), str):
                raise BadRequest("policy import: each file needs 'source' and 'text' strings")
        parsed = {}
        total, base = 2 * sum(len(f["text"]) for f in files), 0
        for f in files:
            text = f["text"]
            step = _parse_progress(progress, base, len(text), total) if progress else None
            try:
                parsed[f["source"]] = (text, parse_text(text, f["source"], step))
            except PolicyError as exc:
                raise BadRequest(str(exc)) from None
            base += 2 * len(text)
        if self.cluster is not None and not local:
            self.cluster.publish_sources({s: text for s, (text, _) in parsed.items()})
            parsed = {SHARED + s: v for s, v in parsed.items()}
        for source, (_, rules) in parsed.items():
            self.repo.replace_source(source, rules)
        self._store.put_policy_sources({s: text for s, (text, _) in parsed.items()})
        self._policy_changed(progress)
        return sum(len(rules) for _, rules in parsed.values())

    def delete_policy(self, name=None, namespace=None, source=None, everything=False):
        before = len(self.repo.rules())
        if self.cluster is not None:
            self._unshare(name, namespace, source, everything)
        if everything:
            sources = {r.source for r in self.repo.rules()}
            for s in sources:
                self.repo.delete_source(s)
            self._store.put_policy_sources({s: None for s in sources})
        elif source is not None:
            if self.cluster is not None and not self.repo.has_source(source):
                source = SHARED + source
            self.repo.delete_source(source)
            self._store.put_policy_sources({source: None})
        else:
            self.repo.delete(name, namespace)
            self._persist_remaining()
        self._policy_changed()
        return before - len(self.repo.rules())

    def _unshare(self, name, namespace, source, everything):
        """A delete that touches shared sources goes to etcd first."""
        shared = self.shared_sources()
        if everything:
            change = {s[len(SHARED):]: None for s in shared}
        elif source is not None:
            # `--source web.yaml` names the shared kvstore:web.yaml unless a
            # node-local source has that very name.
            name_of = source if source.startswith(SHARED) or self.repo.has_source(source) \
                else SHARED + source
            change = {name_of[len(SHARED):]: None} if name_of in shared else {}
        else:
            touched = {r.source for r in self.repo.rules() if r.source in shared and r.name == name
                       and (namespace is None or r.namespace == namespace)}
            change = {}
            for s in touched:
                remaining = _remaining_text(self.repo.rules(), s, name, namespace)
                change[s[len(SHARED):]] = remaining
        if change:
            self.cluster.publish_sources(change)

    def shared_sources(self):
        return {r.source for r in self.repo.rules() if r.source.startswith(SHARED)} | {
            s for s, _ in self._store.policy_sources() if s.startswith(SHARED)}

    def apply_shared_sources(self, texts):
        """Shared sources from etcd ({`kvstore:<source>`: text or None}).
        A source that does not parse is skipped: its previous rules stay
        (the node that wrote it had checked it; a foreign writer must not
        lift a policy). Returns {source: why} of those skipped."""
        changed, refused = {}, {}
        current = dict(self._store.policy_sources())
        for source, text in texts.items():
            if text is None:
                if self.repo.has_source(source) or source in current:
                    self.repo.delete_source(source)
                    changed[source] = None
                continue
            if current.get(source) == text and self.repo.has_source(source):
                continue
            try:
                rules = parse_text(text, source)
            except PolicyError as exc:
                refused[source] = "does not parse, not applied: %s" % exc
                continue
            self.repo.replace_source(source, rules)
            changed[source] = text
        if changed:
            self._store.put_policy_sources(changed)
            self._policy_changed()
        return refused

    def _persist_remaining(self):
        """After a delete by name, store what is left of each source as its rules' YAML."""
        import yaml
        docs = {}
        for rule in self.repo.rules():
            docs.setdefault(rule.source, {}).setdefault((rule.name, rule.namespace), []).append(rule.spec)
        stored = {s for s, _ in self._store.policy_sources()}
        update = {s: yaml.safe_dump_all([_document(name, ns, specs) for (name, ns), specs in by.items()])
                  for s, by in docs.items()}
        update.update({s: None for s in stored - set(docs)})
        self._store.put_policy_sources(update)

    def restore_policy(self):
        count = 0
        for source, text in self._store.policy_sources():
            try:
                rules = parse_text(text, source)
            except PolicyError as exc:
                self._log.error("stored policy from %s no longer parses, dropped: %s", source, exc)
                self._store.put_policy_sources({source: None})
                continue
            self.repo.replace_source(source, rules)
            count += len(rules)
        self._sync_cidr_identities()
        return count

    def _policy_changed(self, progress=None):
        self._sync_cidr_identities()
        policies = list(self._policies.values())
        for done, pol in enumerate(policies, 1):
            pol.regenerate()
            if progress is not None:
                progress(done, len(policies), "updating endpoints")

    def _sync_cidr_identities(self):
        # A /0 is the world itself (identity 2, an ipcache miss), as in
        # Cilium: a CIDR identity at /0 would hide world from every rule
        # that selects it by entity for that address family.
        wanted = {str(p) for p in self.repo.cidr_prefixes() if p.prefixlen > 0}
        for prefix in sorted(wanted - set(self._cidr)):
            number = self._acquire(lbl.cidr_labels(ipaddress.ip_network(prefix)), cidr=True)
            self._cidr[prefix] = number
            self.ipcache.claim(prefix, "cidr", CIDR, number)
        for prefix in sorted(set(self._cidr) - wanted):
            number = self._cidr.pop(prefix)
            self.ipcache.release(prefix, "cidr")
            self.identities.release(number)

    # --- periodic ---

    def refresh_host(self):
        """Map the node's own addresses to the host identity.

        Called before every endpoint is attached (a prior plugin may just
        have given the host a new address, e.g. a bridge gateway) and
        periodically.
        """
        if self._host_prefixes is None:
            return
        prefixes = set(self._host_prefixes())
        for prefix in prefixes - self._host:
            self.ipcache.claim(prefix, "host", HOST, lbl.ID_HOST)
        for prefix in self._host - prefixes:
            self.ipcache.release(prefix, "host")
        self._host = prefixes

    def expire_identities(self):
        gone = self.identities.expire()
        if gone:
            self.cache.update_identities(removed=gone)
            self._log.info("released unused identities %s", ", ".join(map(str, gone)))
        return gone

    # --- views ---

    def identity_rows(self):
        users = {}
        for ep in self._endpoints.values():
            users.setdefault(ep["identity"], []).append(ep["id"])
        rows = self.identities.listing()
        for row in rows:
            row["endpoints"] = sorted(users.get(row["id"], []))
        return rows

    def policy_view(self):
        rules = [{"name": r.name, "namespace": r.namespace, "source": r.source}
                 for r in self.repo.rules()]
        return {"revision": self.policy_revision(), "rules": rules}

    def policy_revision(self):
        """The repository's revision; in a cluster, the shared one (the same
        on every node once it has applied the same changes)."""
        return self.cluster.policy_revision if self.cluster is not None else self.repo.revision

    def endpoint_policy(self, ep_id):
        pol = self._policies.get(ep_id)
        return dict(pol.enforced) if pol else {INGRESS: False, EGRESS: False}
