"""Endpoints: one per pod interface, keyed stably by `containerID:ifname`.

The manager owns the endpoint table (cache + sqlite store) and drives the
datapath: on create it resolves the pod's interface and host veth from the
kernel, writes the endpoint map, attaches both programs and verifies them
before answering, rolling everything back on failure. Mutating methods run
only on the agent's single worker thread; readers take the lock.
It does not decide policy or identities (later layers) and never trusts
prevResult for the host side.

An endpoint belongs to its container: another container's ADD for the same
netns and interface is refused (`Conflict`) while the endpoint is alive, and
replaces it only when it is provably stale (its veth or netns is gone, or
its ifindex names another link now). The kernel is read through a small
`links` object (KernelLinks by default) so that tests can stand in for it.
"""

import contextlib
import os
import threading
import time

from agent.errors import AgentError, BadRequest, Conflict, DatapathFailure, NotFound, from_datapath
from agent.labels import parse_labels
from agent.logs import pod_fields
from cni.attachment import attachment_id, parse_attachment_id
from datapath import netns

# Where the agent puts every endpoint's programs, whatever the chaining mode
# (shown with the mode's datapath needs in the endpoint's record).
HOOKS = ["tc ingress of the host veth: from_container (egress policy)",
         "tc egress of the host veth: to_container (ingress policy)"]

MAX_ENDPOINT_ID = 65535


def split_key(key):
    """'cid:ifname' -> (cid, ifname), refusing anything the plugin could not send."""
    try:
        return parse_attachment_id(key)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


def _validate_request(key, req):
    """The router has checked the request against the API document
    (EndpointRequest in agent/api/openapi.yaml); what a schema cannot say is
    checked here: the body names the endpoint of the path."""
    cid, ifname = split_key(key)
    if (req["containerID"], req["ifname"]) != (cid, ifname):
        raise BadRequest("endpoint request for %s:%s sent to key '%s'"
                         % (req["containerID"], req["ifname"], key))
    # An older plugin's "datapath" (flags nobody acted on) is not kept.
    return {k: v for k, v in req.items() if k != "datapath"}


class KernelLinks:
    """What the manager reads of the kernel's links and namespaces."""

    NetnsError = netns.NetnsError

    @staticmethod
    def inspect_pod_interface(netns_path, ifname):
        return netns.inspect_pod_interface(netns_path, ifname)

    @staticmethod
    def link_by_index(ifindex):
        return netns.link_by_index(ifindex)

    @staticmethod
    def same_netns(path_a, path_b):
        """Both paths name one live network namespace (an nsfs inode)."""
        try:
            a, b = os.stat(path_a), os.stat(path_b)
        except OSError:
            return False
        return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


class EndpointManager:
    def __init__(self, store, datapath, enforcement, log, links=None):
        self._store = store
        self._datapath = datapath
        self._enf = enforcement
        self._log = log
        self._links = links if links is not None else KernelLinks()
        self._lock = threading.Lock()
        self._by_key = {}

    # --- reads (any thread) ---

    def list(self):
        with self._lock:
            return [dict(ep) for ep in sorted(self._by_key.values(), key=lambda e: e["id"])]

    def get(self, key):
        split_key(key)
        with self._lock:
            ep = self._by_key.get(key)
        if ep is None:
            raise NotFound("no endpoint '%s'" % key)
        return dict(ep)

    def with_stats(self, ep):
        out = dict(ep)
        out["stats"] = self._datapath.metrics.stats(ep["id"])
        return out

    def count(self):
        with self._lock:
            return len(self._by_key)

    # --- mutations (worker thread only) ---

    def create(self, key, req):
        req = _validate_request(key, req)
        labels = self._enf.labels_for(req)
        try:
            pod = self._links.inspect_pod_interface(req["netns"], req["ifname"])
        except self._links.NetnsError as exc:
            raise from_datapath(exc) from None
        hint = req.get("hostInterfaceHint")
        if hint and hint != pod.host_ifname:
            # The kernel is the truth; a mismatch means the prior plugin was
            # configured differently (e.g. another veth prefix) or is not
            # the one the chaining mode names.
            self._log.warning("%s: host veth is '%s', not '%s' as %s names it; using the kernel's",
                              key, pod.host_ifname, hint, req["chainingMode"],
                              extra=pod_fields(req))
        with self._lock:
            existing = self._by_key.get(key)
            others = [ep for ep in self._by_key.values()
                      if ep["host"]["ifindex"] == pod.host_ifindex and ep["key"] != key]
        if existing and existing["netns"] == req["netns"] and \
                existing["host"]["ifindex"] == pod.host_ifindex:
            self._attach_programs(existing)  # a repeated ADD: make sure it is all in place
            return existing
        # Another container's endpoint on this very veth is replaced only
        # when it is provably stale (ifindex reused after a DEL we never
        # saw); while it is alive, taking it over would leave its pod
        # without policy once this container's DEL removes the programs.
        for other in others:
            reason = self._stale_reason(other, req["netns"])
            if reason is None:
                raise Conflict(
                    "interface '%s' in netns '%s' (host veth '%s') belongs to endpoint %d of "
                    "container '%s', which is alive; refusing to take it over for container "
                    "'%s'" % (req["ifname"], req["netns"], pod.host_ifname, other["id"],
                              other["containerID"], req["containerID"]))
            self._log.info("endpoint %d (%s) is stale: %s", other["id"], other["key"], reason,
                           extra=pod_fields(other))
        # A previous endpoint under this key is this container's own (pod
        # recreated in a new netns): it goes.
        for stale in ([existing] if existing else []) + others:
            self._log.info("replacing stale endpoint %s (%s)", stale["id"], stale["key"],
                           extra=pod_fields(stale))
            self._remove(stale)
        endpoint = {
            "id": self._allocate_id(),
            "key": key,
            "containerID": req["containerID"],
            "ifname": req["ifname"],
            "netns": req["netns"],
            "network": req["network"],
            "chainingMode": req["chainingMode"],
            "k8s": {k: v for k, v in req.get("k8s", {}).items() if v},
            "datapath": dict(req.get("datapath", {}), hooks=HOOKS),
            "interface": {"ifname": pod.ifname, "ifindex": pod.ifindex, "mac": pod.mac,
                          "mtu": pod.mtu, "addresses": list(pod.addresses)},
            "host": {"ifname": pod.host_ifname, "ifindex": pod.host_ifindex,
                     "mac": pod.host_mac},
            "createdAt": time.time(),
        }
        self._install(endpoint, labels)
        with self._lock:
            self._by_key[key] = endpoint
        self._log.info("endpoint %d created for %s on %s", endpoint["id"], key, pod.host_ifname,
                       extra=pod_fields(endpoint))
        return endpoint

    def _install(self, ep, labels):
        """Identity, policy, map entries, then both programs, verified, stored.

        Policy is in the maps before the programs see a packet (fail closed);
        everything is undone on failure.
        """
        with contextlib.ExitStack() as undo:
            try:
                self._enf.refresh_host()
                self._enf.attach_endpoint(ep, labels)
            except AgentError:
                raise
            except Exception as exc:
                raise DatapathFailure("writing policy for endpoint %d failed: %s"
                                      % (ep["id"], exc)) from exc
            undo.callback(self._enf.detach_endpoint, ep)
            undo.callback(self._detach_quietly, ep["host"]["ifindex"])
            self._attach_programs(ep)
            self._store.put_endpoint(ep)
            undo.pop_all()

    def _attach_programs(self, ep):
        ifindex = ep["host"]["ifindex"]
        try:
            self._datapath.attach(ifindex)
            state = self._datapath.attached(ifindex)
        except Exception as exc:
            raise DatapathFailure("attaching programs to %s failed: %s"
                                  % (ep["host"]["ifname"], exc)) from exc
        missing = [hook for hook, ok in state.items() if not ok]
        if missing:
            raise DatapathFailure("programs %s not attached to %s after attach"
                                  % (", ".join(missing), ep["host"]["ifname"]))

    def change_labels(self, key, add, delete):
        if not isinstance(add, list) or not isinstance(delete, list) or \
                not all(isinstance(x, str) for x in add + delete):
            raise BadRequest("labels: 'add' and 'delete' must be lists of strings")
        self.get(key)  # validates the key; NotFound if unknown
        with self._lock:
            ep = self._by_key[key]
        self._enf.change_labels(ep, add, delete)
        self._store.put_endpoint(ep)
        return dict(ep)

    def _detach_quietly(self, ifindex):
        try:
            self._datapath.detach(ifindex)
        except Exception as exc:  # rollback must go on with the rest
            self._log.warning("detach from ifindex %d during rollback failed: %s", ifindex, exc)

    def delete(self, key):
        split_key(key)
        with self._lock:
            ep = self._by_key.get(key)
        if ep is None:
            return False
        self._remove(ep)
        self._log.info("endpoint %d deleted (%s)", ep["id"], key, extra=pod_fields(ep))
        return True

    def _stale_reason(self, ep, netns_path):
        """Why `ep` (on the veth a new request's interface peers with) is
        stale, or None when it is alive on that very veth, in that netns."""
        host = ep["host"]
        link = self._links.link_by_index(host["ifindex"])
        if link is None:
            return "its host veth '%s' is gone" % host["ifname"]
        if link["ifname"] != host["ifname"]:
            return "ifindex %d is now '%s', not its veth '%s'" % (
                host["ifindex"], link["ifname"], host["ifname"])
        if link.get("peer_ifindex") != ep["interface"]["ifindex"]:
            return "its host veth '%s' peers with another interface now" % host["ifname"]
        if not self._links.same_netns(ep["netns"], netns_path):
            return "its netns '%s' is gone or another one" % ep["netns"]
        return None

    def _same_device(self, ep):
        link = self._links.link_by_index(ep["host"]["ifindex"])
        return bool(link) and link["ifname"] == ep["host"]["ifname"]

    def _remove(self, ep):
        ifindex = ep["host"]["ifindex"]
        self._enf.detach_endpoint(ep)
        with self._lock:
            # the programs serve whichever endpoint has the veth now
            shared = any(other["host"]["ifindex"] == ifindex and other["key"] != ep["key"]
                         for other in self._by_key.values())
        if not shared and self._same_device(ep):
            self._detach_quietly(ifindex)
        self._store.delete_endpoint(ep["key"])
        with self._lock:
            current = self._by_key.get(ep["key"])
            if current is not None and current["id"] == ep["id"]:
                del self._by_key[ep["key"]]

    def _allocate_id(self):
        with self._lock:
            used = {ep["id"] for ep in self._by_key.values()}
        for candidate in range(1, MAX_ENDPOINT_ID + 1):
            if candidate not in used:
                return candidate
        raise DatapathFailure("no free endpoint id (all %d in use)" % MAX_ENDPOINT_ID)

    def gc(self, network, valid):
        if not isinstance(network, str) or not isinstance(valid, list):
            raise BadRequest("gc needs 'network' (string) and 'valid' (list)")
        keep = set()
        for item in valid:
            if not isinstance(item, dict):
                raise BadRequest("gc: every valid attachment must be an object")
            keep.add(attachment_id(item.get("containerID"), item.get("ifname")))
        removed = []
        for ep in self.list():
            if ep["network"] == network and ep["key"] not in keep:
                self._remove(ep)
                removed.append(ep["key"])
                self._log.info("endpoint %d removed by gc of network %s", ep["id"], network,
                               extra=pod_fields(ep))
        if removed:
            self._log.info("gc of network %s removed %s", network, ", ".join(removed))
        return removed

    # --- checks (any thread; reads the kernel) ---

    def check(self, key, expected_addresses=None):
        ep = self.get(key)
        host = ep["host"]
        problems = []
        link = self._links.link_by_index(host["ifindex"])
        if link is None:
            problems.append("host veth '%s' (ifindex %d) is gone" % (host["ifname"], host["ifindex"]))
        elif link["ifname"] != host["ifname"]:
            problems.append("host ifindex %d is now '%s', not the endpoint's veth '%s'"
                            % (host["ifindex"], link["ifname"], host["ifname"]))
        elif link.get("peer_ifindex") != ep["interface"]["ifindex"]:
            problems.append("host veth '%s' no longer peers with the pod's '%s'"
                            % (host["ifname"], ep["ifname"]))
        else:
            for hook, ok in self._datapath.attached(host["ifindex"]).items():
                if not ok:
                    problems.append("program %s is not attached to '%s'" % (hook, host["ifname"]))
        if self._datapath.endpoints.entries().get(host["ifindex"]) != ep["id"]:
            problems.append("endpoint map has no entry for '%s' (endpoint %d)"
                            % (host["ifname"], ep["id"]))
        try:
            pod = self._links.inspect_pod_interface(ep["netns"], ep["ifname"])
        except self._links.NetnsError as exc:
            problems.append(str(exc))
            return problems
        want = sorted(expected_addresses if expected_addresses else ep["interface"]["addresses"])
        have = sorted(pod.addresses)
        if want != have:
            problems.append("addresses of '%s' changed: expected %s, found %s"
                            % (ep["ifname"], ", ".join(want) or "none", ", ".join(have) or "none"))
        return problems

    def health(self):
        """{"healthy": [keys], "unhealthy": [keys]}: healthy = its map entry
        is there and both programs are attached (cheap: no pod netns)."""
        entries = self._datapath.endpoints.entries()
        out = {"healthy": [], "unhealthy": []}
        for ep in self.list():
            ifindex = ep["host"]["ifindex"]
            try:
                ok = entries.get(ifindex) == ep["id"] and \
                    all(self._datapath.attached(ifindex).values())
            except Exception:
                ok = False
            out["healthy" if ok else "unhealthy"].append(ep["key"])
        return out

    # --- start-up (worker thread, before serving) ---

    def restore(self, progress=None):
        """Reload stored endpoints, re-sync maps and filters, drop stale ones.

        `progress(done, total)` hears of each endpoint handled."""
        restored, dropped = 0, 0
        stored = list(self._store.endpoints())
        for done, ep in enumerate(stored, 1):
            if progress is not None:
                progress(done - 1, len(stored))
            link = self._links.link_by_index(ep["host"]["ifindex"])
            alive = (link is not None and link["ifname"] == ep["host"]["ifname"]
                     and link.get("peer_ifindex") == ep["interface"]["ifindex"])
            if not alive:
                self._log.info("endpoint %d (%s): host veth gone, removing", ep["id"], ep["key"],
                               extra=pod_fields(ep))
                self._datapath.remove_endpoint(ep["host"]["ifindex"], ep["id"])
                self._store.delete_endpoint(ep["key"])
                dropped += 1
                continue
            self._install(ep, parse_labels(ep.get("labels", [])))
            with self._lock:
                self._by_key[ep["key"]] = ep
            restored += 1
        if progress is not None:
            progress(len(stored), len(stored))
        self._drop_orphan_map_entries()
        return restored, dropped

    def _drop_orphan_map_entries(self):
        with self._lock:
            known = {ep["host"]["ifindex"]: ep["id"] for ep in self._by_key.values()}
        for ifindex, ep_id in self._datapath.endpoints.entries().items():
            if known.get(ifindex) != ep_id:
                self._log.info("removing orphan map entry ifindex %d -> %d", ifindex, ep_id)
                self._datapath.remove_endpoint(ifindex, ep_id)
