/* Connection tracking: the ct map and the functions that find, refresh
 * and create a connection's entry. One entry per endpoint and connection,
 * keyed in canonical order (ct_swapped), so that a packet and its reply
 * find it with one lookup. The Python side (gc, migration of older keys)
 * is datapath/maps/ct.py.
 */
#ifndef CILIUM_CNI_LIB_CONNTRACK_H
#define CILIUM_CNI_LIB_CONNTRACK_H

#include <uapi/linux/bpf.h>
#include "uapi.h"

#include "common.h"
#include "parse.h"
#include "shared.h"

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

/* ct value flags */
#define CT_F_CLOSING 1  /* a FIN or RST was seen: short lifetime */
#define CT_F_REVERSED 2 /* the key holds the reply's orientation (ct_key_fill) */
#define CT_F_LB 4       /* translated per packet: replies need lb_reverse */
#define CT_F_CANON 8    /* keyed in canonical order; entries without it predate
			 * that and are rewritten by the agent (ct_migrate) */

struct ct_val {
	u64 expires; /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) deadline */
	u32 flags;
	u32 pad;
	u64 packets;
};

/* LRU: a full table evicts the least recently used connection instead of
 * refusing new ones; an evicted connection is re-checked on its next
 * packet. */
BPF_TABLE_PINNED("lru_hash", struct ct_key, struct ct_val, ct, 131072, PIN_CT);

static __always_inline u64 ct_lifetime(u8 proto, u32 flags)
{
	if (proto != IPPROTO_TCP)
		return CT_LIFETIME_NONTCP * NS_PER_SEC;
	if (flags & CT_F_CLOSING)
		return CT_LIFETIME_TCP_CLOSE * NS_PER_SEC;
	return CT_LIFETIME_TCP * NS_PER_SEC;
}

/* The first packet of a TCP connection (or of its re-use of a tuple). */
static __always_inline int is_syn(const struct tuple *t)
{
	return t->proto == IPPROTO_TCP && (t->tcp_flags & (TCPHDR_SYN | TCPHDR_ACK)) == TCPHDR_SYN;
}

/* Refresh a live entry for one more packet of its connection. */
static __always_inline void ct_touch(struct ct_val *val, const struct tuple *t, u64 now)
{
	u32 flags = val->flags;

	if (t->proto == IPPROTO_TCP) {
		if (t->tcp_flags & (TCPHDR_FIN | TCPHDR_RST))
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
	if (t->proto == IPPROTO_TCP && (t->tcp_flags & (TCPHDR_FIN | TCPHDR_RST)))
		val.flags |= CT_F_CLOSING;
	val.expires = now + ct_lifetime(t->proto, val.flags);
	val.packets = 1;
	/* Overwrites an expired entry of the same tuple. A failure (no
	 * memory) only costs a new verdict on the next packet. */
	ct.update(key, &val);
}

#endif
