/* The verdict on a new connection (docs/policy.md):
 *
 *   1. a deny entry matching (remote identity or 0, proto, dport) -> drop
 *   2. an allow entry matching the same                            -> pass
 *   3. else drop if the endpoint is enforced in this direction, else pass
 *
 * with the remote end's identity from the ipcache. The Python side is
 * datapath/maps/policy.py.
 */
#ifndef CILIUM_CNI_LIB_POLICY_H
#define CILIUM_CNI_LIB_POLICY_H

#include <uapi/linux/bpf.h>

#include "common.h"
#include "endpoints.h"
#include "parse.h"
#include "shared.h"

#ifndef PIN_POLICY
#error "PIN_POLICY (bpffs path of the policy map) must be defined"
#endif

/* LPM prefix lengths of policy keys (bits after prefixlen): ep_id 32, dir 8,
 * deny 8, pad 16, identity 32 = 96; proto 8 -> 104; pad 8 + dport 16. A
 * packet is looked up with every bit significant. */
#define POLICY_PREFIX_FULL 128

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

BPF_TABLE_PINNED("lpm_trie", struct policy_key, struct policy_val,
		 policy, 1048576, PIN_POLICY, BPF_F_NO_PREALLOC);

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

#endif
