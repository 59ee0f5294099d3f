/* Per-endpoint tc programs for the host side of a pod's veth.
 *
 * from_container runs on tc ingress of the host veth (packets leaving the
 * pod), to_container on tc egress (packets entering the pod). This stage
 * only counts: every packet goes on with TC_ACT_UNSPEC, nothing is dropped,
 * redirected or rewritten. Identity and flags in ep_info are reserved for
 * the policy stage and are written as 0 for now.
 *
 * Both maps are pinned (paths come from the loader's -D flags) so that
 * endpoint entries and counters survive an agent restart, and so that the
 * filters left attached while the agent is down keep using the same maps.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>

#ifndef PIN_ENDPOINTS
#error "PIN_ENDPOINTS (bpffs path of the endpoints map) must be defined"
#endif
#ifndef PIN_METRICS
#error "PIN_METRICS (bpffs path of the metrics map) must be defined"
#endif

/* The direction is the pod's point of view, as in the agent's API. */
#define DIR_INGRESS 1 /* to the pod */
#define DIR_EGRESS 2  /* from the pod */

/* ep_id 0 is never given to an endpoint: it collects traffic seen on a
 * device whose endpoints entry is missing (e.g. between attach and
 * set_endpoint, or after remove_endpoint while the filter is still there). */
#define EP_ID_UNKNOWN 0

/* BPF_F_NO_PREALLOC: a preallocated per-CPU hash costs
 * max_entries * value_size * nr_cpus up front (~134 MB for 131072 entries on
 * 64 CPUs); entries are created once per endpoint and direction, so the
 * allocation on first packet is not on a hot path. */
#define MAP_NO_PREALLOC 1

struct ep_info {
	u32 ep_id;
	u32 identity;
	u32 flags;
	u32 pad;
};

struct metrics_key {
	u32 ep_id;
	u8 dir;
	u8 pad[3];
};

struct metrics_val {
	u64 packets;
	u64 bytes;
};

BPF_TABLE_PINNED("hash", u32, struct ep_info, endpoints, 65536, PIN_ENDPOINTS);
BPF_TABLE_PINNED("percpu_hash", struct metrics_key, struct metrics_val,
		 metrics, 65536 * 2, PIN_METRICS, MAP_NO_PREALLOC);

static __always_inline int account(struct __sk_buff *skb, u8 dir)
{
	u32 ifindex = skb->ifindex;
	struct ep_info *ep = endpoints.lookup(&ifindex);
	/* Fully initialised (padding included): the key is hashed bytewise. */
	struct metrics_key key = {};
	struct metrics_val zero = {};
	struct metrics_val *val;

	key.ep_id = ep ? ep->ep_id : EP_ID_UNKNOWN;
	key.dir = dir;
	val = metrics.lookup_or_try_init(&key, &zero);
	if (val) {
		/* Per-CPU value, and both tc hooks run with bottom halves
		 * disabled: nothing else on this CPU can interleave, so plain
		 * increments are enough. */
		val->packets += 1;
		val->bytes += skb->len;
	}
	/* UNSPEC, not OK: classification goes on, so filters the prior
	 * plugin (or anyone) put at later priorities on this hook still see
	 * the packet; with none, the hook's default passes it. */
	return TC_ACT_UNSPEC;
}

int from_container(struct __sk_buff *skb)
{
	return account(skb, DIR_EGRESS);
}

int to_container(struct __sk_buff *skb)
{
	return account(skb, DIR_INGRESS);
}
