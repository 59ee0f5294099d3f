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
 * Map layouts are the contract in docs/policy.md: the loader encodes the
 * same bytes, so any change here must change both (and the doc).
 *
 * Services (docs/services.md, lb_packet.h): what the pod sends to a service
 * frontend is translated to a backend before conntrack and the verdict, so
 * policy sees the backend; replies are reverse-translated on the way in.
 * from_netdev/to_netdev do the same for NodePort on the node's devices.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/if_ether.h>

#ifndef PIN_ENDPOINTS
#error "PIN_ENDPOINTS (bpffs path of the endpoints map) must be defined"
#endif
#ifndef PIN_METRICS
#error "PIN_METRICS (bpffs path of the metrics map) must be defined"
#endif
#ifndef PIN_IPCACHE
#error "PIN_IPCACHE (bpffs path of the ipcache map) must be defined"
#endif
#ifndef PIN_POLICY
#error "PIN_POLICY (bpffs path of the policy map) must be defined"
#endif
#ifndef PIN_CT
#error "PIN_CT (bpffs path of the ct map) must be defined"
#endif

/* Connection lifetimes in seconds; tests compile with short ones (-D). */
#ifndef CT_LIFETIME_TCP
#define CT_LIFETIME_TCP 21600
#endif
#ifndef CT_LIFETIME_TCP_CLOSE
#define CT_LIFETIME_TCP_CLOSE 10
#endif
#ifndef CT_LIFETIME_NONTCP
#define CT_LIFETIME_NONTCP 60
#endif
#define NS_PER_SEC 1000000000ULL

/* The direction is the pod's point of view, as in the agent's API. */
#define DIR_INGRESS 1 /* to the pod */
#define DIR_EGRESS 2  /* from the pod */

/* endpoints flags: which directions default-deny (step 3 of the verdict). */
#define EP_F_INGRESS_ENFORCED 1
#define EP_F_EGRESS_ENFORCED 2

/* metrics reason: 0 counts forwarded packets, the others drops. */
#define REASON_FORWARDED 0
#define REASON_POLICY_DENIED 1 /* default deny: no allow entry matched */
#define REASON_POLICY_DENY 2   /* a deny entry matched */
#define REASON_INVALID 3       /* truncated or malformed headers */
#define REASON_NO_SERVICE 4    /* to a service frontend without backends */
/* Not a drop: the event of a service translation (monitor, when enabled). */
#define EVENT_LB_XLATE 100

/* ct value flags */
#define CT_F_CLOSING 1  /* a FIN or RST was seen: short lifetime */
#define CT_F_REVERSED 2 /* the key holds the reply's orientation (ct_key_fill) */
#define CT_F_LB 4       /* translated per packet: replies need lb_reverse */
#define CT_F_CANON 8    /* keyed in canonical order; entries without it predate
			 * that and are rewritten by the agent (ct_migrate) */

/* ep_id 0 is never given to an endpoint: it collects traffic seen on a
 * device whose endpoints entry is missing (e.g. between attach and
 * set_endpoint, or after remove_endpoint while the filter is still there). */
#define EP_ID_UNKNOWN 0

#define IDENTITY_WORLD 2

/* LPM prefix lengths of policy keys (bits after prefixlen): ep_id 32, dir 8,
 * deny 8, pad 16, identity 32 = 96; proto 8 -> 104; pad 8 + dport 16. A
 * packet is looked up with every bit significant. */
#define POLICY_PREFIX_FULL 128


/* IP protocol numbers, spelled out: uapi/linux/in.h (as bcc includes it)
 * lacks IPPROTO_ICMPV6. */
#define PROTO_ICMP 1
#define PROTO_TCP 6
#define PROTO_UDP 17
#define PROTO_ICMPV6 58
#define PROTO_SCTP 132

#define ICMP_ECHOREPLY 0
#define ICMP_ECHO 8
#define ICMPV6_ECHO_REQUEST 128
#define ICMPV6_ECHO_REPLY 129
#define NDISC_FIRST 133 /* router solicitation */
#define NDISC_LAST 137  /* redirect */
#define IPV6_HOPOPTS 0
#define MLD_QUERY 130
#define MLD_REPORT 131
#define MLD_DONE 132
#define MLD2_REPORT 143

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

/* The contract's keys hold some fields in network byte order (so that LPM
 * prefixes cover their leading bits). bpf targets are little endian on
 * every architecture we run on (x86_64, arm64). */
#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "big-endian hosts are not supported"
#endif
#define be16(x) ((u16)__builtin_bswap16(x))
#define be32(x) ((u32)__builtin_bswap32(x))

/* BPF_F_NO_PREALLOC (MAP_NO_PREALLOC, shared.h): a preallocated per-CPU
 * hash costs max_entries * value_size * nr_cpus up front (~134 MB for
 * 131072 entries on 64 CPUs); entries are created once per endpoint,
 * direction and reason, so the allocation on first packet is not on a hot
 * path. LPM tries require the flag. */
#include "shared.h"
#include "lb.h"

struct ep_info {
	u32 ep_id;
	u32 identity;
	u32 flags;
	u32 pad;
};

struct metrics_key {
	u32 ep_id;
	u8 dir;
	u8 reason;
	u16 pad;
};

struct metrics_val {
	u64 packets;
	u64 bytes;
};

struct policy_key {
	u32 prefixlen;
	u32 ep_id; /* big endian */
	u8 dir;
	u8 deny;
	u16 pad1;
	u32 identity; /* big endian; 0 = any */
	u8 proto;     /* 0 = any */
	u8 pad2;
	u16 dport; /* big endian */
};

struct policy_val {
	u64 packets; /* new connections this entry decided */
};

struct ct_val {
	u64 expires; /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) deadline */
	u32 flags;
	u32 pad;
	u64 packets;
};

/* The perf event of a drop; decoded by maps.event_decode (maps.EVENT). */
struct drop_event {
	u64 time; /* bpf_ktime_get_ns() */
	u32 ep_id;
	u32 src_identity;
	u32 dst_identity;
	u8 saddr[16];
	u8 daddr[16];
	u16 sport; /* host order */
	u16 dport;
	u8 proto;
	u8 family;
	u8 dir;
	u8 reason;
	u32 ifindex;
	u32 len;
	u16 xport; /* translation events: the backend (host order) */
	u16 svc_id;
	u8 xaddr[16];
};

BPF_TABLE_PINNED("hash", u32, struct ep_info, endpoints, 65536, PIN_ENDPOINTS);
BPF_TABLE_PINNED("percpu_hash", struct metrics_key, struct metrics_val,
		 metrics, 65536 * 2, PIN_METRICS, MAP_NO_PREALLOC);
BPF_TABLE_PINNED("lpm_trie", struct policy_key, struct policy_val,
		 policy, 1048576, PIN_POLICY, MAP_NO_PREALLOC);
/* LRU: a full table evicts the least recently used connection instead of
 * refusing new ones; an evicted connection is re-checked on its next
 * packet. */
BPF_TABLE_PINNED("lru_hash", struct ct_key, struct ct_val, ct, 131072, PIN_CT);
BPF_PERF_OUTPUT(events);

/* What the parser extracts from a packet. Addresses are raw bytes (IPv4 in
 * the first 4), ports in network order as ct keys want them. */
struct tuple {
	u8 saddr[16];
	u8 daddr[16];
	u16 sport;
	u16 dport;
	u8 proto;
	u8 family;
	u8 tcp_flags;
	u8 l4off; /* offset of the L4 header in the frame */
};

enum parse_result {
	PARSE_L3,      /* IPv4/IPv6: goes through ct and policy */
	PARSE_PASS,    /* ARP, neighbour discovery, non-IP: always passes */
	PARSE_INVALID, /* truncated headers */
};

static __always_inline void count(u32 ep_id, u8 dir, u8 reason, u32 len)
{
	/* Fully initialised (padding included): the key is hashed bytewise. */
	struct metrics_key key = {};
	struct metrics_val zero = {};
	struct metrics_val *val;

	key.ep_id = ep_id;
	key.dir = dir;
	key.reason = reason;
	val = metrics.lookup_or_try_init(&key, &zero);
	if (val) {
		/* Per-CPU value, and both tc hooks run with bottom halves
		 * disabled: nothing else on this CPU can interleave, so plain
		 * increments are enough. */
		val->packets += 1;
		val->bytes += len;
	}
}

/* Ports of TCP, UDP and SCTP sit in the same first 4 bytes. */
static __always_inline int parse_l4(struct __sk_buff *skb, u32 off, struct tuple *t)
{
	u8 icmp[6]; /* type, code, checksum, echo id */

	switch (t->proto) {
	case PROTO_TCP: {
		u8 hdr[14];

		if (bpf_skb_load_bytes(skb, off, hdr, sizeof(hdr)) < 0)
			return PARSE_INVALID;
		__builtin_memcpy(&t->sport, &hdr[0], 2);
		__builtin_memcpy(&t->dport, &hdr[2], 2);
		t->tcp_flags = hdr[13];
		return PARSE_L3;
	}
	case PROTO_UDP:
	case PROTO_SCTP:
		if (bpf_skb_load_bytes(skb, off, &t->sport, 4) < 0)
			return PARSE_INVALID;
		return PARSE_L3;
	case PROTO_ICMP:
	case PROTO_ICMPV6:
		if (bpf_skb_load_bytes(skb, off, icmp, sizeof(icmp)) < 0)
			return PARSE_INVALID;
		if (t->proto == PROTO_ICMPV6 && icmp[0] >= NDISC_FIRST && icmp[0] <= NDISC_LAST)
			return PARSE_PASS;
		/* Echo request and reply carry the same id both ways: as both
		 * ports it makes a reply the exact reverse of its request. Any
		 * other ICMP message has port 0. */
		if ((t->proto == PROTO_ICMP && (icmp[0] == ICMP_ECHO || icmp[0] == ICMP_ECHOREPLY)) ||
		    (t->proto == PROTO_ICMPV6 &&
		     (icmp[0] == ICMPV6_ECHO_REQUEST || icmp[0] == ICMPV6_ECHO_REPLY))) {
			__builtin_memcpy(&t->sport, &icmp[4], 2);
			t->dport = t->sport;
		}
		return PARSE_L3;
	}
	/* Another protocol (or an IPv6 extension header, which we do not
	 * walk): its number with port 0. */
	return PARSE_L3;
}

/* Multicast listener discovery: ICMPv6 behind a hop-by-hop header (router
 * alert). Like neighbour discovery it is link-local control traffic that
 * bridges and routers need (snooping), not a connection to a peer. */
static __always_inline int is_mld(struct __sk_buff *skb)
{
	u8 hop[2], type;

	if (bpf_skb_load_bytes(skb, ETH_HLEN + 40, hop, sizeof(hop)) < 0 || hop[0] != PROTO_ICMPV6)
		return 0;
	if (bpf_skb_load_bytes(skb, ETH_HLEN + 40 + ((u32)hop[1] + 1) * 8, &type, 1) < 0)
		return 0;
	return type == MLD_QUERY || type == MLD_REPORT || type == MLD_DONE || type == MLD2_REPORT;
}

static __always_inline int parse(struct __sk_buff *skb, struct tuple *t)
{
	u16 proto;

	if (bpf_skb_load_bytes(skb, 12, &proto, 2) < 0)
		return PARSE_INVALID;
	if (proto == be16(ETH_P_IP)) {
		u8 ip[20];
		u32 ihl;
		u16 frag;

		if (bpf_skb_load_bytes(skb, ETH_HLEN, ip, sizeof(ip)) < 0)
			return PARSE_INVALID;
		ihl = (ip[0] & 0x0f) * 4;
		if ((ip[0] >> 4) != 4 || ihl < 20)
			return PARSE_INVALID;
		t->family = 4;
		t->proto = ip[9];
		__builtin_memcpy(t->saddr, &ip[12], 4);
		__builtin_memcpy(t->daddr, &ip[16], 4);
		/* A non-first fragment has no L4 header: port 0. */
		frag = ((u16)(ip[6] & 0x1f) << 8) | ip[7];
		if (frag)
			return PARSE_L3;
		t->l4off = ETH_HLEN + ihl;
		return parse_l4(skb, ETH_HLEN + ihl, t);
	}
	if (proto == be16(ETH_P_IPV6)) {
		u8 ip6[40];

		if (bpf_skb_load_bytes(skb, ETH_HLEN, ip6, sizeof(ip6)) < 0)
			return PARSE_INVALID;
		if ((ip6[0] >> 4) != 6)
			return PARSE_INVALID;
		t->family = 6;
		t->proto = ip6[6];
		__builtin_memcpy(t->saddr, &ip6[8], 16);
		__builtin_memcpy(t->daddr, &ip6[24], 16);
		if (t->proto == IPV6_HOPOPTS && is_mld(skb))
			return PARSE_PASS;
		t->l4off = ETH_HLEN + 40;
		return parse_l4(skb, ETH_HLEN + 40, t);
	}
	/* ARP, and anything else that is not IP (LLDP, ...): policy is about
	 * IP peers. */
	return PARSE_PASS;
}

static __always_inline u32 remote_identity(const struct tuple *t, u8 dir)
{
	struct ipcache_key key = {};
	struct ipcache_val *val;

	key.family = t->family;
	key.prefixlen = t->family == 4 ? IPCACHE_PREFIX_V4 : IPCACHE_PREFIX_V6;
	/* The remote end: the destination of what the pod sends, the source
	 * of what it receives. */
	if (dir == DIR_EGRESS)
		__builtin_memcpy(key.addr, t->daddr, 16);
	else
		__builtin_memcpy(key.addr, t->saddr, 16);
	val = ipcache.lookup(&key);
	return val ? val->identity : IDENTITY_WORLD;
}

static __always_inline u64 ct_lifetime(u8 proto, u32 flags)
{
	if (proto != PROTO_TCP)
		return CT_LIFETIME_NONTCP * NS_PER_SEC;
	if (flags & CT_F_CLOSING)
		return CT_LIFETIME_TCP_CLOSE * NS_PER_SEC;
	return CT_LIFETIME_TCP * NS_PER_SEC;
}

/* The first packet of a TCP connection (or of its re-use of a tuple). */
static __always_inline int is_syn(const struct tuple *t)
{
	return t->proto == PROTO_TCP && (t->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
}

/* Refresh a live entry for one more packet of its connection. */
static __always_inline void ct_touch(struct ct_val *val, const struct tuple *t, u64 now)
{
	u32 flags = val->flags;

	if (t->proto == PROTO_TCP) {
		if (t->tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST))
			flags |= CT_F_CLOSING;
		else if (is_syn(t))
			flags &= ~CT_F_CLOSING; /* the tuple is re-used: reopen */
		val->flags = flags;
	}
	val->expires = now + ct_lifetime(t->proto, flags);
	__sync_fetch_and_add(&val->packets, 1);
}

/* Is the source end of t "after" its destination end, in an arbitrary but
 * fixed total order (addresses as four native u32, then ports)? Both
 * directions of a connection are keyed in the order where it is not, so a
 * packet and its reply find the same entry with one lookup. */
static __always_inline int ct_swapped(const struct tuple *t)
{
	u32 s, d;
	int i;

#pragma unroll
	for (i = 0; i < 4; i++) {
		__builtin_memcpy(&s, &t->saddr[i * 4], 4);
		__builtin_memcpy(&d, &t->daddr[i * 4], 4);
		if (s != d)
			return s > d;
	}
	return t->sport > t->dport;
}

/* A tuple's own key, as is (the lb_ct map's keys are not canonical: its
 * forward and reverse entries hold different values). */
static __always_inline void ct_key_fill_raw(struct ct_key *key, const struct tuple *t,
					    u32 ep_id, u8 dir)
{
	__builtin_memcpy(key->saddr, t->saddr, 16);
	__builtin_memcpy(key->daddr, t->daddr, 16);
	key->sport = t->sport;
	key->dport = t->dport;
	key->proto = t->proto;
	key->family = t->family;
	key->dir = dir;
	key->pad = 0;
	key->ep_id = ep_id;
}

/* The raw key of t's reply: addresses and ports swapped. */
static __always_inline void ct_key_fill_reply(struct ct_key *key, const struct tuple *t,
					      u32 ep_id, u8 dir)
{
	ct_key_fill_raw(key, t, ep_id, dir);
	__builtin_memcpy(key->saddr, t->daddr, 16);
	__builtin_memcpy(key->daddr, t->saddr, 16);
	key->sport = t->dport;
	key->dport = t->sport;
}

/* The conntrack key of tuple t as seen by endpoint ep_id in direction dir:
 * the tuple itself, or (when ct_swapped) its reply in the other direction.
 * A connection's entry is thereby found by its packets both ways, and only
 * by them: the same tuple in the other direction (a pod reaching itself
 * through a service) is another connection with a verdict of its own. */
static __always_inline int ct_key_fill(struct ct_key *key, const struct tuple *t,
				       u32 ep_id, u8 dir)
{
	int swapped = ct_swapped(t);

	if (swapped)
		ct_key_fill_reply(key, t, ep_id, dir == DIR_EGRESS ? DIR_INGRESS : DIR_EGRESS);
	else
		ct_key_fill_raw(key, t, ep_id, dir);
	return swapped;
}

/* The live connection of the endpoint this packet belongs to, in either
 * direction, refreshed for this packet; NULL if none. An expired entry is
 * a miss (ct_create overwrites it). */
static __always_inline struct ct_val *ct_lookup(struct ct_key *key, const struct tuple *t,
						u32 ep_id, u8 dir, u64 now)
{
	struct ct_val *val;

	ct_key_fill(key, t, ep_id, dir);
	val = ct.lookup(key);
	if (!val || val->expires <= now)
		return 0;
	ct_touch(val, t, now);
	return val;
}

static __always_inline void ct_create(struct ct_key *key, const struct tuple *t,
				      u32 ep_id, u8 dir, u64 now, u32 flags)
{
	struct ct_val val = {};

	val.flags = flags | CT_F_CANON;
	if (ct_key_fill(key, t, ep_id, dir))
		val.flags |= CT_F_REVERSED;
	if (t->proto == PROTO_TCP && (t->tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST)))
		val.flags |= CT_F_CLOSING;
	val.expires = now + ct_lifetime(t->proto, val.flags);
	val.packets = 1;
	/* Overwrites an expired entry of the same tuple. A failure (no
	 * memory) only costs a new verdict on the next packet. */
	ct.update(key, &val);
}

/* One LPM lookup: does any entry of this kind (deny or allow) for this
 * identity match the packet's protocol and port? The longest matching
 * prefix is the most specific such entry; its hit counter goes up. */
static __always_inline int policy_match(struct policy_key *key, u8 deny, u32 identity)
{
	struct policy_val *val;

	key->deny = deny;
	key->identity = be32(identity);
	val = policy.lookup(key);
	if (!val)
		return 0;
	__sync_fetch_and_add(&val->packets, 1);
	return 1;
}

/* Steps 1-3 of the verdict: returns REASON_FORWARDED or a drop reason. */
static __always_inline u8 policy_verdict(const struct tuple *t, u32 ep_id, u8 dir,
					 u32 remote, u32 flags)
{
	struct policy_key key = {};

	key.prefixlen = POLICY_PREFIX_FULL;
	key.ep_id = be32(ep_id);
	key.dir = dir;
	key.proto = t->proto;
	key.dport = t->dport; /* already big endian */
	if (policy_match(&key, 1, remote) || policy_match(&key, 1, 0))
		return REASON_POLICY_DENY;
	if (policy_match(&key, 0, remote) || policy_match(&key, 0, 0))
		return REASON_FORWARDED;
	if (flags & (dir == DIR_INGRESS ? EP_F_INGRESS_ENFORCED : EP_F_EGRESS_ENFORCED))
		return REASON_POLICY_DENIED;
	return REASON_FORWARDED;
}

/* The fields every event has: the packet's flow, where and why. */
static __always_inline void event_fill(struct drop_event *ev, struct __sk_buff *skb,
				       const struct tuple *t, u32 ep_id, u8 dir, u8 reason)
{
	ev->time = bpf_ktime_get_ns();
	ev->ep_id = ep_id;
	__builtin_memcpy(ev->saddr, t->saddr, 16);
	__builtin_memcpy(ev->daddr, t->daddr, 16);
	ev->sport = be16(t->sport);
	ev->dport = be16(t->dport);
	ev->proto = t->proto;
	ev->family = t->family;
	ev->dir = dir;
	ev->reason = reason;
	ev->ifindex = skb->ifindex;
	ev->len = skb->len;
}

static __always_inline int drop(struct __sk_buff *skb, const struct tuple *t,
				const struct ep_info *ep, u8 dir, u32 remote, u8 reason)
{
	struct drop_event ev = {};

	count(ep->ep_id, dir, reason, skb->len);
	event_fill(&ev, skb, t, ep->ep_id, dir, reason);
	/* Pod's own identity on its side of the packet. */
	ev.src_identity = dir == DIR_EGRESS ? ep->identity : remote;
	ev.dst_identity = dir == DIR_EGRESS ? remote : ep->identity;
	events.perf_submit(skb, &ev, sizeof(ev));
	return TC_ACT_SHOT;
}

#include "lb_packet.h"

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
	    (!conn || (conn->flags & CT_F_LB) || t.proto != PROTO_TCP || is_syn(&t))) {
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
