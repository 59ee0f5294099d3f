/* Per-endpoint tc programs for the host side of a pod's veth.
 *
 * from_container runs on tc ingress of the host veth (packets leaving the
 * pod: the pod's *egress*), to_container on tc egress (packets entering the
 * pod: its *ingress*). Each packet of a known endpoint is parsed, matched
 * against connection tracking, and a packet of a new connection gets the
 * verdict of docs/policy.md:
 *
 *   1. a deny entry matching (remote identity or 0, proto, dport) -> drop
 *   2. an allow entry matching the same                            -> pass
 *   3. else drop if the endpoint is enforced in this direction, else pass
 *
 * A passed new connection gets a ct entry, so its later packets and its
 * replies pass without a verdict. Passes return TC_ACT_UNSPEC (nothing is
 * redirected or rewritten); drops return TC_ACT_SHOT, are counted per
 * reason and raise a perf event. A device without an endpoints entry passes
 * everything (counted under endpoint 0), as before policy existed.
 *
 * All maps but `events` are pinned (paths come from the loader's -D flags)
 * so that entries, ct state and counters survive an agent restart, and the
 * filters left attached while the agent is down keep using the same maps.
 * Map layouts are the contract in docs/policy.md: the map families of
 * datapath/maps/ encode the same bytes, so any change here must change both
 * (and the doc).
 *
 * This file holds the entry points only; the parser, conntrack, policy,
 * drops and service translation live in the headers under lib/ (expanded
 * into the C text by datapath/bpfsrc.py: bcc rewrites map calls only in
 * the main file).
 *
 * Services (docs/services.md, lib/lb_packet.h): what the pod sends to a
 * service frontend is translated to a backend before conntrack and the
 * verdict, so policy sees the backend; replies are reverse-translated on
 * the way in.
 * from_netdev/to_netdev do the same for NodePort on the node's devices.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include "lib/uapi.h"

#include "lib/common.h"
#include "lib/conntrack.h"
#include "lib/drop.h"
#include "lib/endpoints.h"
#include "lib/lb_packet.h"
#include "lib/parse.h"
#include "lib/policy.h"
#include "lib/shared.h"

static __always_inline int handle(struct __sk_buff *skb, u8 dir)
{
	u32 ifindex = skb->ifindex;
	struct ep_info *found = endpoints.lookup(&ifindex);
	struct ep_info ep;
	struct tuple t = {};
	struct ct_key ctk = {};
	struct ct_val *conn;
	u32 remote, xlated = 0;
	u64 now;
	u8 reason;
	int parsed;

	if (!found) {
		count(EP_ID_UNKNOWN, dir, REASON_FORWARDED, skb->len);
		goto pass;
	}
	/* A copy: the agent may rewrite the entry while we run. */
	ep = *found;

	parsed = parse(skb, &t);
	if (parsed == PARSE_INVALID) {
		/* Without enforcement in this direction nothing would stop a
		 * well-formed packet either: let the stack judge it. */
		if (ep.flags & (dir == DIR_INGRESS ? EP_F_INGRESS_ENFORCED : EP_F_EGRESS_ENFORCED)) {
			/* The addresses are known when only L4 is cut short. */
			remote = t.family ? remote_identity(&t, dir) : 0;
			return drop(skb, &t, &ep, dir, remote, REASON_INVALID);
		}
		goto count;
	}
	if (parsed == PARSE_PASS)
		goto count;

	now = bpf_ktime_get_ns();
	/* Most packets belong to a known connection: one lookup settles
	 * them. What the pod sends is offered to the service translation
	 * unless it is a TCP segment of an established untranslated
	 * connection: a new connection (a SYN, even on a known tuple), a packet
	 * of a translated one (its entry holds the translated tuple, so the
	 * tuple the pod sent is no connection of ours), and all UDP (a flow
	 * that predates its service is translated from the service's
	 * creation on, where kube-proxy has to flush conntrack for it). */
	conn = ct_lookup(&ctk, &t, ep.ep_id, dir, now);
	if (dir == DIR_EGRESS &&
	    (!conn || (conn->flags & CT_F_LB) || t.proto != IPPROTO_TCP || is_syn(&t))) {
		int lb = lb_translate(skb, &t, ep.ep_id, now, 0);

		if (lb == LB_NO_BACKEND) {
			/* counted and reported as a drop of the SYN either way */
			drop(skb, &t, &ep, dir, IDENTITY_WORLD, REASON_NO_SERVICE);
			if (lb_refuse_tcp(skb, &t) == 0)
				return bpf_redirect(skb->ifindex, 0);
			return TC_ACT_SHOT;
		}
		if (lb == LB_FAILED)
			return drop(skb, &t, &ep, dir, 0, REASON_INVALID);
		if (lb == LB_XLATED) {
			xlated = CT_F_LB;
			conn = ct_lookup(&ctk, &t, ep.ep_id, dir, now);
		}
	}
	if (conn) {
		if (xlated && !(conn->flags & CT_F_LB))
			conn->flags |= CT_F_LB; /* a recorded tuple now translated */
		goto forward;
	}

	remote = remote_identity(&t, dir);
	reason = policy_verdict(&t, ep.ep_id, dir, remote, ep.flags);
	if (reason != REASON_FORWARDED)
		return drop(skb, &t, &ep, dir, remote, reason);
	ct_create(&ctk, &t, ep.ep_id, dir, now, xlated);

forward:
	/* A reply of a translated connection gets its frontend back; so may
	 * the first packet of an inbound one, whose entry may have been
	 * evicted while the translation's stayed. */
	if (dir == DIR_INGRESS && (!conn || (conn->flags & CT_F_LB)) &&
	    lb_reverse(skb, &t, ep.ep_id) == LB_FAILED)
		return drop(skb, &t, &ep, dir, 0, REASON_INVALID);
count:
	count(ep.ep_id, dir, REASON_FORWARDED, skb->len);
pass:
	/* UNSPEC, not OK: classification goes on, so filters the prior
	 * plugin (or anyone) put at later priorities on this hook still see
	 * the packet; with none, the hook's default passes it. */
	return TC_ACT_UNSPEC;
}

int from_container(struct __sk_buff *skb)
{
	return handle(skb, DIR_EGRESS);
}

int to_container(struct __sk_buff *skb)
{
	return handle(skb, DIR_INGRESS);
}

/* NodePort: tc ingress and egress of the node's external devices (agent
 * config `nodeport-devices`). Traffic to a frontend (a node address and
 * NodePort, or any service address routed to the node) is DNAT'd to a local
 * backend; replies leaving the device get the frontend back as source.
 * Backends on other nodes would need SNAT: not supported (docs/services.md).
 * Conntrack entries of devices use endpoint id 0. */
int from_netdev(struct __sk_buff *skb)
{
	struct ep_info none = {};
	struct tuple t = {};
	int lb;

	if (parse(skb, &t) != PARSE_L3)
		return TC_ACT_UNSPEC;
	lb = lb_unsnat(skb, &t);
	if (lb == LB_NONE)
		lb = lb_translate(skb, &t, EP_ID_UNKNOWN, bpf_ktime_get_ns(), 1);
	if (lb == LB_SNAT)
		return lb_forward(skb, &t);
	if (lb == LB_NO_BACKEND)
		return drop(skb, &t, &none, DIR_INGRESS, IDENTITY_WORLD, REASON_NO_SERVICE);
	if (lb == LB_FAILED)
		return drop(skb, &t, &none, DIR_INGRESS, IDENTITY_WORLD, REASON_INVALID);
	return TC_ACT_UNSPEC;
}

int to_netdev(struct __sk_buff *skb)
{
	struct ep_info none = {};
	struct tuple t = {};

	if (parse(skb, &t) != PARSE_L3)
		return TC_ACT_UNSPEC;
	if (lb_reverse(skb, &t, EP_ID_UNKNOWN) == LB_FAILED)
		return drop(skb, &t, &none, DIR_EGRESS, IDENTITY_WORLD, REASON_INVALID);
	return TC_ACT_UNSPEC;
}
