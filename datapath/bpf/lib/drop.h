/* Counting and reporting: the per-CPU metrics map (packets and bytes per
 * endpoint, direction and reason) and the events perf buffer, with drop()
 * that counts a dropped packet, reports it and returns TC_ACT_SHOT. The
 * Python side is datapath/maps/metrics.py and datapath/events.py
 * (`EVENT` decodes struct drop_event).
 */
#ifndef CILIUM_CNI_LIB_DROP_H
#define CILIUM_CNI_LIB_DROP_H

#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>

#include "common.h"
#include "endpoints.h"
#include "parse.h"

#ifndef PIN_METRICS
#error "PIN_METRICS (bpffs path of the metrics map) must be defined"
#endif

/* Not a drop: the event of a service translation (monitor, when enabled). */
#define EVENT_LB_XLATE 100

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

/* The perf event of a drop (or, with reason EVENT_LB_XLATE, a translation). */
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

/* BPF_F_NO_PREALLOC: a preallocated per-CPU hash costs max_entries *
 * value_size * nr_cpus up front (~134 MB for 131072 entries on 64 CPUs);
 * entries are created once per endpoint, direction and reason, so the
 * allocation on first packet is not on a hot path. */
BPF_TABLE_PINNED("percpu_hash", struct metrics_key, struct metrics_val,
		 metrics, 65536 * 2, PIN_METRICS, BPF_F_NO_PREALLOC);
BPF_PERF_OUTPUT(events);

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

#endif
