"""generic-veth: any prior plugin that leaves the pod on a veth pair.

bridge, ptp, flannel and most others: the pod's `CNI_IFNAME` inside
`CNI_NETNS` is one end of a veth, the other end is in the host namespace.
prevResult is only a hint: many plugins do not list the host side, so the
agent resolves the host device from the kernel (the veth's peer index).

Datapath needs: ARP passes through untouched, the prior plugin's routes and
addresses are left alone, and IP addresses come from the prior plugin's IPAM.
"""

from chainers.api import register
from cni.attachment import record_pending_delete
from cni.client import endpoint_url, error_from_response
from cni.errors import DATAPATH_FAILURE, UNKNOWN_CONTAINER, CniError
from cni.result import addresses_for_interface


class GenericVeth:
    """The base of every veth-shaped mode: subclasses set `name` and may
    name the host device they expect (`host_hint`). What each mode's prior
    plugin needs of the datapath (ARP passes, its routes and IPAM are left
    alone) holds for every mode and is how the agent's datapath works, so
    it is documented (docs/chaining.md), not sent."""

    name = "generic-veth"

    # Types of the plugin that must come first in a conflist of this mode
    # (the one that builds the pod's network); empty: any.
    prior_types = ()

    def conflist_problem(self, types):
        """Why a conflist whose plugins have `types` (in order) does not fit
        this mode, or None."""
        if self.prior_types and (not types or types[0] not in self.prior_types):
            return "chaining mode %s expects a conflist that starts with %s, not %s" % (
                self.name, " or ".join(self.prior_types), types[0] if types else "nothing")
        return None

    def host_hint(self, ctx):
        """The host-side device name the prior plugin gives this pod, if it
        is derivable; only a hint: the agent resolves the device from the
        kernel and logs a mismatch."""
        return None

    def endpoint_request(self, ctx):
        args = ctx.args
        return {
            "containerID": args.container_id,
            "ifname": args.ifname,
            "netns": args.netns,
            "network": ctx.conf.name,
            "chainingMode": self.name,
            "k8s": {
                "namespace": args.k8s_namespace,
                "podName": args.k8s_pod_name,
                "podUID": args.k8s_pod_uid,
            },
            "prevResultAddresses": addresses_for_interface(ctx.prev_result, args.ifname),
            # the netconf's "args" convention; the agent turns its labels
            # (args.cni.labels) into the endpoint's identity
            "netconfArgs": ctx.conf.args,
            "hostInterfaceHint": self.host_hint(ctx),
        }

    def add(self, ctx):
        url = endpoint_url(ctx.args.container_id, ctx.args.ifname)
        _, endpoint = ctx.client.call("PUT", url, self.endpoint_request(ctx))
        ctx.log.info("endpoint %s ready: host veth %s, addresses %s" % (
            endpoint.get("id"), endpoint.get("host", {}).get("ifname"),
            ",".join(endpoint.get("interface", {}).get("addresses", []))))
        return ctx.prev_result

    def check(self, ctx):
        url = endpoint_url(ctx.args.container_id, ctx.args.ifname, "/check")
        body = {"addresses": addresses_for_interface(ctx.prev_result, ctx.args.ifname)}
        _, report = ctx.client.call("POST", url, body)
        problems = (report or {}).get("problems") or []
        if problems:
            raise CniError(DATAPATH_FAILURE, "; ".join(problems), details="\n".join(problems))

    def delete(self, ctx):
        """Never fails the pod's deletion for the agent's sake.

        An unknown endpoint is already deleted (404, code 3; a 404 for a
        route this agent does not serve is not); an agent that does not
        answer, or answers nonsense, gets the deletion recorded on disk and
        completes it on start (or its next sweep).
        """
        args = ctx.args
        try:
            status, body = ctx.client.request(
                "DELETE", endpoint_url(args.container_id, args.ifname), timeout=10.0)
            if status == 200 or status == 404 and \
                    error_from_response(status, body).code == UNKNOWN_CONTAINER:
                return
            reason = "agent answered HTTP %d" % status
        except CniError as exc:  # not reachable, gone mid-answer, or an answer that is garbage
            reason = exc.msg
        path = record_pending_delete(ctx.conf.agent_socket, args.container_id, args.ifname, {
            "containerID": args.container_id, "ifname": args.ifname,
            "netns": args.netns, "network": ctx.conf.name})
        ctx.log.info("deletion recorded at %s for the agent to complete (%s)" % (path, reason))


register(GenericVeth.name, GenericVeth())
