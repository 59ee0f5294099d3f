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
#define CT_F_CLOSING 1 /* a FIN or RST was seen: short lifetime */

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

/* Refresh a live entry for one more packet of its connection. */
static __always_inline void ct_touch(struct ct_val *val, const struct tuple *t, u64 now)
{
	u32 flags = val->flags;

	if (t->proto == PROTO_TCP) {
		if (t->tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST))
			flags |= CT_F_CLOSING;
		else if ((t->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN)
			flags &= ~CT_F_CLOSING; /* the tuple is re-used: reopen */
		val->flags = flags;
	}
	val->expires = now + ct_lifetime(t->proto, flags);
	__sync_fetch_and_add(&val->packets, 1);
}

/* Does this packet belong to a live connection of the endpoint, in either
 * direction? An expired entry is a miss (ct_create overwrites it). */
/* The conntrack key of tuple t as seen by endpoint ep_id in direction dir. */
static __always_inline void ct_key_fill(struct ct_key *key, const struct tuple *t,
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

static __always_inline int ct_lookup(struct ct_key *key, const struct tuple *t,
				     u32 ep_id, u8 dir, u64 now)
{
	struct ct_val *val;

	ct_key_fill(key, t, ep_id, dir);
	val = ct.lookup(key);
	if (val && val->expires > now) {
		ct_touch(val, t, now);
		return 1;
	}
	/* A reply: the reverse tuple, created in the other direction. */
	__builtin_memcpy(key->saddr, t->daddr, 16);
	__builtin_memcpy(key->daddr, t->saddr, 16);
	key->sport = t->dport;
	key->dport = t->sport;
	key->dir = dir == DIR_EGRESS ? DIR_INGRESS : DIR_EGRESS;
	val = ct.lookup(key);
	if (val && val->expires > now) {
		ct_touch(val, t, now);
		return 1;
	}
	return 0;
}

static __always_inline void ct_create(struct ct_key *key, const struct tuple *t,
				      u32 ep_id, u8 dir, u64 now)
{
	struct ct_val val = {};

	ct_key_fill(key, t, ep_id, dir);
	if (t->proto == PROTO_TCP && (t->tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST)))
		val.flags = CT_F_CLOSING;
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

static __always_inline int drop(struct __sk_buff *skb, const struct tuple *t,
				const struct ep_info *ep, u8 dir, u32 remote, u8 reason)
{
	struct drop_event ev = {};

	count(ep->ep_id, dir, reason, skb->len);
	ev.time = bpf_ktime_get_ns();
	ev.ep_id = ep->ep_id;
	/* Pod's own identity on its side of the packet. */
	ev.src_identity = dir == DIR_EGRESS ? ep->identity : remote;
	ev.dst_identity = dir == DIR_EGRESS ? remote : ep->identity;
	__builtin_memcpy(ev.saddr, t->saddr, 16);
	__builtin_memcpy(ev.daddr, t->daddr, 16);
	ev.sport = be16(t->sport);
	ev.dport = be16(t->dport);
	ev.proto = t->proto;
	ev.family = t->family;
	ev.dir = dir;
	ev.reason = reason;
	ev.ifindex = skb->ifindex;
	ev.len = skb->len;
	events.perf_submit(skb, &ev, sizeof(ev));
	return TC_ACT_SHOT;
}

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

#define AF_INET 2
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
	u32 csum_off = t->l4off + (t->proto == PROTO_TCP ? 16 : 6);
	u64 l4flags = t->proto == PROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;

	if (t->family == 4) {
		u32 old4, new4;

		__builtin_memcpy(&old4, old_addr, 4);
		__builtin_memcpy(&new4, new_addr, 4);
		if (bpf_l4_csum_replace(skb, csum_off, old4, new4, l4flags | BPF_F_PSEUDO_HDR | 4) < 0)
			return -1;
		if (bpf_l3_csum_replace(skb, ETH_HLEN + 10, old4, new4, 4) < 0)
			return -1;
		if (bpf_skb_store_bytes(skb, ETH_HLEN + (is_dst ? 16 : 12), &new4, 4, 0) < 0)
			return -1;
	} else {
		u32 o[4], n[4];
		s64 diff;

		__builtin_memcpy(o, old_addr, 16);
		__builtin_memcpy(n, new_addr, 16);
		diff = bpf_csum_diff(o, 16, n, 16, 0);
		if (diff < 0 || bpf_l4_csum_replace(skb, csum_off, 0, diff, l4flags | BPF_F_PSEUDO_HDR) < 0)
			return -1;
		if (bpf_skb_store_bytes(skb, ETH_HLEN + (is_dst ? 24 : 8), n, 16, 0) < 0)
			return -1;
	}
	if (old_port != new_port) {
		if (bpf_l4_csum_replace(skb, csum_off, old_port, new_port, l4flags | 2) < 0)
			return -1;
		if (bpf_skb_store_bytes(skb, t->l4off + (is_dst ? 2 : 0), &new_port, 2, 0) < 0)
			return -1;
	}
	return 0;
}

/* The monitor's translation event (only while lb_config asks for them). */
static __always_inline void lb_event(struct __sk_buff *skb, const struct tuple *t, u32 ep_id,
				     const struct lb_backend *be, u16 svc_id)
{
	struct drop_event ev = {};

	ev.time = bpf_ktime_get_ns();
	ev.ep_id = ep_id;
	__builtin_memcpy(ev.saddr, t->saddr, 16);
	__builtin_memcpy(ev.daddr, t->daddr, 16);
	ev.sport = be16(t->sport);
	ev.dport = be16(t->dport);
	ev.proto = t->proto;
	ev.family = t->family;
	ev.dir = DIR_EGRESS;
	ev.reason = EVENT_LB_XLATE;
	ev.ifindex = skb->ifindex;
	ev.len = skb->len;
	ev.xport = be16(be->port);
	ev.svc_id = svc_id;
	__builtin_memcpy(ev.xaddr, be->addr, 16);
	events.perf_submit(skb, &ev, sizeof(ev));
}

/* Is the backend on another node? Local ones are this node's endpoints
 * (endpoint identities) or the node itself; anything else (world, CIDR)
 * is reached through the network, and its replies would not come back
 * through this node without SNAT. */
static __always_inline int lb_backend_remote(const struct lb_backend *be)
{
	struct ipcache_key ik = {};
	struct ipcache_val *iv;

	ik.family = be->family;
	ik.prefixlen = be->family == 4 ? IPCACHE_PREFIX_V4 : IPCACHE_PREFIX_V6;
	__builtin_memcpy(ik.addr, be->addr, 16);
	iv = ipcache.lookup(&ik);
	if (!iv)
		return 1;
	return !(iv->identity == LB_IDENTITY_HOST || (iv->identity >= 256 && iv->identity < (1 << 24)));
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

	if (t->proto != PROTO_TCP && t->proto != PROTO_UDP)
		return LB_NONE;
	ct_key_fill(&key, t, ep_id, LB_CT_SVC);
	cv = lb_ct.lookup(&key);
	if (cv && cv->expires > now) {
		backend_id = cv->backend_id;
		found = lb_backends.lookup(&backend_id);
		if (found) {
			cv->expires = now + ct_lifetime(t->proto, 0);
			__builtin_memcpy(nv.addr, cv->addr, 16);
			nv.snat_port = cv->snat_port;
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
		lb_ct.update(&key, &nv);
		/* the reverse entry: keyed by the tuple as it leaves toward the
		 * backend, holding the client for SNAT'd replies */
		__builtin_memcpy(nv.caddr, t->saddr, 16);
		nv.cport = t->sport;
		if (nv.snat_port) {
			__builtin_memcpy(key.saddr, t->daddr, 16);
			key.sport = nv.snat_port;
		}
		__builtin_memcpy(key.daddr, found->addr, 16);
		key.dport = found->port;
		key.dir = LB_CT_REV;
		lb_ct.update(&key, &nv);
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

	if (t->family != 4 || (t->proto != PROTO_TCP && t->proto != PROTO_UDP))
		return LB_NONE;
	__builtin_memcpy(key.saddr, t->daddr, 16);
	__builtin_memcpy(key.daddr, t->saddr, 16);
	key.sport = t->dport;
	key.dport = t->sport;
	key.proto = t->proto;
	key.family = t->family;
	key.dir = LB_CT_REV;
	key.ep_id = EP_ID_UNKNOWN;
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
	if (bpf_skb_load_bytes(skb, ETH_HLEN + 8, ttl_proto, 2) < 0 || ttl_proto[0] <= 1)
		return TC_ACT_SHOT;
	__builtin_memcpy(&old, ttl_proto, 2);
	ttl_proto[0]--;
	__builtin_memcpy(&new, ttl_proto, 2);
	if (bpf_l3_csum_replace(skb, ETH_HLEN + 10, old, new, 2) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_HLEN + 8, ttl_proto, 1, 0) < 0)
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

	if (t->family != 4 || t->proto != PROTO_TCP || t->l4off != ETH_HLEN + 20 ||
	    (t->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK | TCP_FLAG_RST)) != TCP_FLAG_SYN)
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
	tcp[13] = TCP_FLAG_RST | TCP_FLAG_ACK;
	__builtin_memset(&tcp[14], 0, 6);
	__builtin_memcpy(&pseudo[0], &ip[12], 8);
	pseudo[9] = PROTO_TCP;
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

	if (t->proto != PROTO_TCP && t->proto != PROTO_UDP)
		return LB_NONE;
	__builtin_memcpy(key.saddr, t->daddr, 16);
	__builtin_memcpy(key.daddr, t->saddr, 16);
	key.sport = t->dport;
	key.dport = t->sport;
	key.proto = t->proto;
	key.family = t->family;
	key.dir = LB_CT_REV;
	key.ep_id = ep_id;
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

static __always_inline int handle(struct __sk_buff *skb, u8 dir)
{
	u32 ifindex = skb->ifindex;
	struct ep_info *found = endpoints.lookup(&ifindex);
	struct ep_info ep;
	struct tuple t = {};
	struct ct_key ctk = {};
	u32 remote;
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
		goto forward;
	}
	if (parsed == PARSE_PASS)
		goto forward;

	now = bpf_ktime_get_ns();
	if (dir == DIR_EGRESS) {
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
	}
	if (ct_lookup(&ctk, &t, ep.ep_id, dir, now))
		goto forward;

	remote = remote_identity(&t, dir);
	reason = policy_verdict(&t, ep.ep_id, dir, remote, ep.flags);
	if (reason != REASON_FORWARDED)
		return drop(skb, &t, &ep, dir, remote, reason);
	ct_create(&ctk, &t, ep.ep_id, dir, now);

forward:
	if (dir == DIR_INGRESS && parsed == PARSE_L3 && lb_reverse(skb, &t, ep.ep_id) == LB_FAILED)
		return drop(skb, &t, &ep, dir, 0, REASON_INVALID);
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
