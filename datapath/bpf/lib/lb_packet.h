/* Per-packet service translation for endpoint.c: DNAT toward a backend,
 * reverse NAT of replies, SNAT of NodePort connections to remote backends,
 * and the RST that refuses a connection to a service without backends.
 * Maps in lb.h, layouts in docs/services.md.
 */
#ifndef CILIUM_CNI_LIB_LB_PACKET_H
#define CILIUM_CNI_LIB_LB_PACKET_H

#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include "uapi.h"

#include "common.h"
#include "conntrack.h"
#include "drop.h"
#include "lb.h"
#include "parse.h"
#include "shared.h"

/* -- Service load-balancing per packet (docs/services.md) -----------------
 *
 * What a pod sends to a service frontend that the socket hooks did not
 * translate (their translation happens in connect()/sendmsg(), so the
 * packet already carries the backend) is DNAT'd here: the first packet of
 * a connection picks a backend at random among the service's slots and
 * records two lb_ct entries, the original tuple -> backend (so every later
 * packet goes to the same one) and the translated tuple -> frontend (so
 * replies get their source put back). Policy and conntrack then see the
 * translated packet: egress policy applies to the backend's identity.
 */

#define LB_NONE 0
#define LB_XLATED 1
#define LB_NO_BACKEND 2
#define LB_FAILED 3
#define LB_SNAT 4 /* translated and source-NAT'd: forward by FIB lookup */

#define SNAT_PORT_MIN 32768
#define SNAT_PORT_RANGE 28232 /* 32768-60999, the kernel's default ephemeral range */
#define SNAT_TRIES 4

/* Rewrite the destination (is_dst) or source address and port, fixing the
 * IPv4 header checksum and the L4 checksum with its pseudo header. A UDP
 * checksum of 0 (IPv4: none) stays 0 (BPF_F_MARK_MANGLED_0). */
static __always_inline int nat_rewrite(struct __sk_buff *skb, const struct tuple *t, int is_dst,
				       const u8 *old_addr, const u8 *new_addr, u16 old_port,
				       u16 new_port)
{
	u32 csum_off = t->l4off + (t->proto == IPPROTO_TCP ? offsetof(struct tcphdr, check) :
							     offsetof(struct udphdr, check));
	u64 l4flags = t->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;

	if (t->family == 4) {
		u32 old4, new4;

		__builtin_memcpy(&old4, old_addr, 4);
		__builtin_memcpy(&new4, new_addr, 4);
		if (bpf_l4_csum_replace(skb, csum_off, old4, new4, l4flags | BPF_F_PSEUDO_HDR | 4) < 0)
			return -1;
		if (bpf_l3_csum_replace(skb, ETH_HLEN + offsetof(struct iphdr, check), old4, new4, 4) < 0)
			return -1;
		if (bpf_skb_store_bytes(skb, ETH_HLEN + (is_dst ? offsetof(struct iphdr, daddr) :
								  offsetof(struct iphdr, saddr)),
					&new4, 4, 0) < 0)
			return -1;
	} else {
		u32 o[4], n[4];
		s64 diff;

		__builtin_memcpy(o, old_addr, 16);
		__builtin_memcpy(n, new_addr, 16);
		diff = bpf_csum_diff(o, 16, n, 16, 0);
		if (diff < 0 || bpf_l4_csum_replace(skb, csum_off, 0, diff, l4flags | BPF_F_PSEUDO_HDR) < 0)
			return -1;
		if (bpf_skb_store_bytes(skb, ETH_HLEN + (is_dst ? offsetof(struct ipv6hdr, daddr) :
								  offsetof(struct ipv6hdr, saddr)),
					n, 16, 0) < 0)
			return -1;
	}
	if (old_port != new_port) {
		if (bpf_l4_csum_replace(skb, csum_off, old_port, new_port, l4flags | 2) < 0)
			return -1;
		/* TCP's ports sit where UDP's do */
		if (bpf_skb_store_bytes(skb, t->l4off + (is_dst ? offsetof(struct udphdr, dest) :
								  offsetof(struct udphdr, source)),
					&new_port, 2, 0) < 0)
			return -1;
	}
	return 0;
}

/* The monitor's translation event (only while lb_config asks for them). */
static __always_inline void lb_event(struct __sk_buff *skb, const struct tuple *t, u32 ep_id,
				     const struct lb_backend *be, u16 svc_id)
{
	struct drop_event ev = {};

	event_fill(&ev, skb, t, ep_id, DIR_EGRESS, EVENT_LB_XLATE);
	ev.xport = be16(be->port);
	ev.svc_id = svc_id;
	__builtin_memcpy(ev.xaddr, be->addr, 16);
	events.perf_submit(skb, &ev, sizeof(ev));
}

/* Is the backend on another node? Local ones are this node's endpoints
 * (endpoint identities not marked remote) or the node itself; anything
 * else (world, CIDR, a pod of another node of the cluster) is reached
 * through the network, and its replies would not come back through this
 * node without SNAT. */
static __always_inline int lb_backend_remote(const struct lb_backend *be)
{
	struct ipcache_key ik = {};
	struct ipcache_val *iv;

	ik.family = be->family;
	ik.prefixlen = be->family == 4 ? IPCACHE_PREFIX_V4 : IPCACHE_PREFIX_V6;
	__builtin_memcpy(ik.addr, be->addr, 16);
	iv = ipcache.lookup(&ik);
	if (!iv || (iv->flags & IPCACHE_REMOTE))
		return 1;
	return !(iv->identity == IDENTITY_HOST || (iv->identity >= 256 && iv->identity < (1 << 24)));
}

/* A source port on the node address for a new SNAT'd connection to `be`:
 * the client's own if free, else a random one. The reverse entry of the
 * connection reserves it; 0 if every try was taken. */
static __always_inline u16 lb_snat_port(const struct tuple *t, const u8 *node, const struct lb_backend *be,
					u32 ep_id)
{
	struct ct_key key = {};
	u16 port = t->sport;
	int i;

	__builtin_memcpy(key.saddr, node, 16);
	__builtin_memcpy(key.daddr, be->addr, 16);
	key.dport = be->port;
	key.proto = t->proto;
	key.family = t->family;
	key.dir = LB_CT_REV;
	key.ep_id = ep_id;
#pragma unroll
	for (i = 0; i < SNAT_TRIES; i++) {
		key.sport = port;
		if (!lb_ct.lookup(&key))
			return port;
		port = be16((u16)(SNAT_PORT_MIN + bpf_get_prandom_u32() % SNAT_PORT_RANGE));
	}
	return 0;
}

/* The reverse entry of a translation: keyed by the tuple as it leaves
 * toward the backend (after SNAT, if any), holding the frontend and the
 * client. `key` is the forward key; it is changed. */
static __always_inline void lb_ct_write_rev(struct ct_key *key, const struct tuple *t,
					    struct lb_ct_val *v, const struct lb_backend *be)
{
	if (v->snat_port) {
		__builtin_memcpy(key->saddr, t->daddr, 16);
		key->sport = v->snat_port;
	}
	__builtin_memcpy(key->daddr, be->addr, 16);
	key->dport = be->port;
	key->dir = LB_CT_REV;
	lb_ct.update(key, v);
}

/* DNAT toward a backend; on LB_XLATED (LB_SNAT: source-NAT'd as well), t
 * holds the translated tuple. `snat_ok`: a NodePort device, where a
 * remote backend gets the node address as source. */
static __always_inline int lb_translate(struct __sk_buff *skb, struct tuple *t, u32 ep_id, u64 now,
					int snat_ok)
{
	struct ct_key key = {};
	struct lb_ct_val *cv, nv = {};
	struct lb_backend *found = 0, be;
	struct lb_key lk;
	struct lb_val *svc;
	u32 backend_id = 0;
	int created = 0;

	if (t->proto != IPPROTO_TCP && t->proto != IPPROTO_UDP)
		return LB_NONE;
	ct_key_fill_raw(&key, t, ep_id, LB_CT_SVC);
	cv = lb_ct.lookup(&key);
	if (cv && cv->expires > now) {
		backend_id = cv->backend_id;
		found = lb_backends.lookup(&backend_id);
		if (found) {
			cv->expires = now + ct_lifetime(t->proto, 0);
			__builtin_memcpy(&nv, cv, sizeof(nv));
			__builtin_memcpy(nv.caddr, t->saddr, 16);
			nv.cport = t->sport;
			/* A new TCP connection on a tuple that is still recorded
			 * (the client reused its port): make sure replies are
			 * reverse-translated even if the reverse entry went. */
			if (is_syn(t))
				lb_ct_write_rev(&key, t, &nv, found);
		}
	}
	if (!found) {
		/* A new connection, or its backend was removed: pick one. */
		svc = lb_lookup(&lk, t->daddr, t->dport, t->proto, t->family);
		if (!svc)
			return LB_NONE;
		if (!svc->count)
			return LB_NO_BACKEND;
		nv.svc_id = svc->svc_id;
		found = lb_pick(&lk, svc, &backend_id);
		if (!found)
			return LB_NO_BACKEND; /* slots being rewritten: the client retries */
		nv.expires = now + ct_lifetime(t->proto, 0);
		__builtin_memcpy(nv.addr, t->daddr, 16);
		nv.port = t->dport;
		nv.backend_id = backend_id;
		if (snat_ok && t->family == 4 && svc->type != LB_TYPE_CLUSTERIP && lb_backend_remote(found)) {
			nv.snat_port = lb_snat_port(t, t->daddr, found, ep_id);
			if (!nv.snat_port)
				return LB_FAILED;
		}
		__builtin_memcpy(nv.caddr, t->saddr, 16);
		nv.cport = t->sport;
		lb_ct.update(&key, &nv);
		lb_ct_write_rev(&key, t, &nv, found);
		created = 1;
	}
	be = *found;
	if (nat_rewrite(skb, t, 1, t->daddr, be.addr, t->dport, be.port) < 0)
		return LB_FAILED;
	if (created && lb_trace_on())
		lb_event(skb, t, ep_id, &be, nv.svc_id);
	__builtin_memcpy(t->daddr, be.addr, 16);
	t->dport = be.port;
	if (!nv.snat_port)
		return LB_XLATED;
	if (nat_rewrite(skb, t, 0, t->saddr, nv.addr, t->sport, nv.snat_port) < 0)
		return LB_FAILED;
	__builtin_memcpy(t->saddr, nv.addr, 16);
	t->sport = nv.snat_port;
	return LB_SNAT;
}

/* The reply of a SNAT'd connection, arriving from the backend: back to the
 * client, from the frontend. */
static __always_inline int lb_unsnat(struct __sk_buff *skb, struct tuple *t)
{
	struct ct_key key = {};
	struct lb_ct_val *cv, v;

	if (t->family != 4 || (t->proto != IPPROTO_TCP && t->proto != IPPROTO_UDP))
		return LB_NONE;
	ct_key_fill_reply(&key, t, EP_ID_UNKNOWN, LB_CT_REV);
	cv = lb_ct.lookup(&key);
	if (!cv || !cv->snat_port)
		return LB_NONE;
	v = *cv;
	if (nat_rewrite(skb, t, 1, t->daddr, v.caddr, t->dport, v.cport) < 0 ||
	    nat_rewrite(skb, t, 0, t->saddr, v.addr, t->sport, v.port) < 0)
		return LB_FAILED;
	__builtin_memcpy(t->daddr, v.caddr, 16);
	t->dport = v.cport;
	__builtin_memcpy(t->saddr, v.addr, 16);
	t->sport = v.port;
	return LB_SNAT;
}

/* bcc 0.26 declares bpf_redirect_neigh without its `plen` argument. */
static long (*redirect_neigh)(u32 ifindex, struct bpf_redir_neigh *params, int plen, u64 flags) =
	(void *)BPF_FUNC_redirect_neigh;

/* Forward a packet whose source is now a node address: the stack would
 * drop it as a martian, so route it here (FIB lookup, new MACs, TTL - 1)
 * and hand it to the egress device. */
static __always_inline int lb_forward(struct __sk_buff *skb, const struct tuple *t)
{
	struct bpf_fib_lookup fib = {};
	u8 ttl_proto[2];
	u16 old, new;
	int rc;

	fib.family = AF_INET;
	fib.l4_protocol = t->proto;
	fib.sport = t->sport;
	fib.dport = t->dport;
	fib.tot_len = skb->len - ETH_HLEN;
	fib.ifindex = skb->ifindex;
	__builtin_memcpy(&fib.ipv4_src, t->saddr, 4);
	__builtin_memcpy(&fib.ipv4_dst, t->daddr, 4);
	rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
		return TC_ACT_SHOT;
	if (bpf_skb_load_bytes(skb, ETH_HLEN + offsetof(struct iphdr, ttl), ttl_proto, 2) < 0 ||
	    ttl_proto[0] <= 1)
		return TC_ACT_SHOT;
	__builtin_memcpy(&old, ttl_proto, 2);
	ttl_proto[0]--;
	__builtin_memcpy(&new, ttl_proto, 2);
	if (bpf_l3_csum_replace(skb, ETH_HLEN + offsetof(struct iphdr, check), old, new, 2) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_HLEN + offsetof(struct iphdr, ttl), ttl_proto, 1, 0) < 0)
		return TC_ACT_SHOT;
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		/* the kernel resolves the next hop's address itself */
		struct bpf_redir_neigh nh = {};

		nh.nh_family = AF_INET;
		nh.ipv4_nh = fib.ipv4_dst; /* the next hop, as the lookup left it */
		return redirect_neigh(fib.ifindex, &nh, sizeof(nh), 0);
	}
	if (bpf_skb_store_bytes(skb, 0, fib.dmac, 6, 0) < 0 ||
	    bpf_skb_store_bytes(skb, 6, fib.smac, 6, 0) < 0)
		return TC_ACT_SHOT;
	return bpf_redirect(fib.ifindex, 0);
}

static __always_inline u16 csum_fold(s64 sum)
{
	u32 c = (u32)sum;

	c = (c & 0xffff) + (c >> 16);
	c = (c & 0xffff) + (c >> 16);
	return (u16)~c;
}

/* A service without backends refuses a pod's TCP connection at once: its
 * SYN (IPv4 without options) is turned into the RST/ACK the frontend would
 * send and redirected back into the pod. Returns -1 where that is not
 * possible (then the packet is dropped: the client times out). */
static __always_inline int lb_refuse_tcp(struct __sk_buff *skb, const struct tuple *t)
{
	u8 mac[12], ip[20], tcp[20], pseudo[32] = {};
	u32 seq, ack;
	u16 csum;
	s64 sum;

	if (t->family != 4 || t->proto != IPPROTO_TCP || t->l4off != ETH_HLEN + 20 ||
	    (t->tcp_flags & (TCPHDR_SYN | TCPHDR_ACK | TCPHDR_RST)) != TCPHDR_SYN)
		return -1;
	if (bpf_skb_load_bytes(skb, 0, mac, 12) < 0 || bpf_skb_load_bytes(skb, ETH_HLEN, ip, 20) < 0 ||
	    bpf_skb_load_bytes(skb, ETH_HLEN + 20, tcp, 20) < 0)
		return -1;
	/* ack = the SYN's sequence number + 1 (a SYN carries no data here) */
	__builtin_memcpy(&seq, &tcp[4], 4);
	ack = be32(be32(seq) + 1);
	{
		u8 eth[12];

		__builtin_memcpy(eth, &mac[6], 6);
		__builtin_memcpy(&eth[6], mac, 6);
		__builtin_memcpy(mac, eth, 12);
	}
	ip[2] = 0;
	ip[3] = 40;
	ip[6] = 0x40; /* DF */
	ip[7] = 0;
	ip[8] = 64;
	ip[10] = ip[11] = 0;
	__builtin_memcpy(&ip[12], t->daddr, 4);
	__builtin_memcpy(&ip[16], t->saddr, 4);
	sum = bpf_csum_diff(0, 0, (u32 *)ip, 20, 0);
	if (sum < 0)
		return -1;
	csum = csum_fold(sum);
	__builtin_memcpy(&ip[10], &csum, 2);
	__builtin_memcpy(&tcp[0], &t->dport, 2);
	__builtin_memcpy(&tcp[2], &t->sport, 2);
	__builtin_memset(&tcp[4], 0, 4);
	__builtin_memcpy(&tcp[8], &ack, 4);
	tcp[12] = 5 << 4;
	tcp[13] = TCPHDR_RST | TCPHDR_ACK;
	__builtin_memset(&tcp[14], 0, 6);
	__builtin_memcpy(&pseudo[0], &ip[12], 8);
	pseudo[9] = IPPROTO_TCP;
	pseudo[11] = 20;
	__builtin_memcpy(&pseudo[12], tcp, 20);
	sum = bpf_csum_diff(0, 0, (u32 *)pseudo, 32, 0);
	if (sum < 0)
		return -1;
	csum = csum_fold(sum);
	__builtin_memcpy(&tcp[16], &csum, 2);
	if (bpf_skb_change_tail(skb, ETH_HLEN + 40, 0) < 0)
		return -1;
	if (bpf_skb_store_bytes(skb, 0, mac, 12, 0) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_HLEN, ip, 20, 0) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_HLEN + 20, tcp, 20, 0) < 0)
		return -1;
	return 0;
}

/* A reply from a backend: put the frontend back as its source. */
static __always_inline int lb_reverse(struct __sk_buff *skb, struct tuple *t, u32 ep_id)
{
	struct ct_key key = {};
	struct lb_ct_val *cv, v;

	if (t->proto != IPPROTO_TCP && t->proto != IPPROTO_UDP)
		return LB_NONE;
	ct_key_fill_reply(&key, t, ep_id, LB_CT_REV);
	cv = lb_ct.lookup(&key);
	if (!cv)
		return LB_NONE;
	v = *cv;
	if (nat_rewrite(skb, t, 0, t->saddr, v.addr, t->sport, v.port) < 0)
		return LB_FAILED;
	__builtin_memcpy(t->saddr, v.addr, 16);
	t->sport = v.port;
	return LB_XLATED;
}

#endif
