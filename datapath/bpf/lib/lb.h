/* Service load-balancing maps, shared by endpoint.c (per packet, tc) and
 * sock.c (per socket, cgroup hooks), and the service lookup and backend
 * choice both make. Layouts: docs/services.md; the Python encodings are
 * datapath/maps/lb.py. Both programs open the same pins.
 */
#ifndef CILIUM_CNI_LIB_LB_H
#define CILIUM_CNI_LIB_LB_H

#include <uapi/linux/bpf.h>

#include "common.h"
#include "shared.h"

#ifndef PIN_LB_SERVICES
#error "PIN_LB_SERVICES must be defined"
#endif
#ifndef PIN_LB_BACKENDS
#error "PIN_LB_BACKENDS must be defined"
#endif
#ifndef PIN_LB_CT
#error "PIN_LB_CT must be defined"
#endif
#ifndef PIN_LB_SOCK
#error "PIN_LB_SOCK must be defined"
#endif
#ifndef PIN_LB_CONFIG
#error "PIN_LB_CONFIG must be defined"
#endif

#define LB_TYPE_CLUSTERIP 1
#define LB_TYPE_NODEPORT 2
#define LB_TYPE_HOSTPORT 3

/* lb_config[0] bits */
#define LB_CFG_TRACE 1         /* raise a perf event per translated connection */
#define LB_CFG_NODEPORT_ANY 2  /* some NodePort frontend is on 0.0.0.0 / :: */

/* Slot 0 of a service: count = number of backend slots (0: no backends,
 * connections are refused), svc_id, type. Slots 1..count: backend_id. */
struct lb_key {
	u8 addr[16]; /* IPv4 in the first 4 bytes; all zero: any node address (NodePort) */
	u16 port;    /* big endian */
	u16 slot;
	u8 proto;
	u8 family;
	u8 pad[2];
};

struct lb_val {
	u32 backend_id;
	u16 count;
	u16 svc_id;
	u8 type;
	u8 pad[3];
};

struct lb_backend {
	u8 addr[16];
	u16 port; /* big endian */
	u8 family;
	u8 pad;
};

/* Per-packet translations: key is conntrack's struct ct_key with dir
 * LB_CT_SVC (the tuple the client sent: to the frontend) or LB_CT_REV (the
 * translated tuple: to the backend). */
#define LB_CT_SVC 3
#define LB_CT_REV 4

struct lb_ct_val {
	u64 expires;
	u8 addr[16]; /* the frontend the client addressed */
	u16 port;    /* big endian */
	u16 svc_id;
	u32 backend_id;
	u8 caddr[16];  /* the client (reverse entries of SNAT'd connections) */
	u16 cport;     /* big endian */
	u16 snat_port; /* big endian; 0: no SNAT. Source port toward the backend */
	u32 pad;
};

/* Socket translations: which frontend a socket's backend stands for. */
struct lb_sock_key {
	u64 cookie;
	u8 addr[16]; /* backend */
	u16 port;    /* big endian */
	u8 family;
	u8 pad[5];
};

struct lb_sock_val {
	u8 addr[16]; /* frontend */
	u16 port;    /* big endian */
	u16 svc_id;
	u32 pad;
};

BPF_TABLE_PINNED("hash", struct lb_key, struct lb_val, lb_services, 262144, PIN_LB_SERVICES);
BPF_TABLE_PINNED("hash", u32, struct lb_backend, lb_backends, 262144, PIN_LB_BACKENDS);
BPF_TABLE_PINNED("lru_hash", struct ct_key, struct lb_ct_val, lb_ct, 131072, PIN_LB_CT);
BPF_TABLE_PINNED("lru_hash", struct lb_sock_key, struct lb_sock_val, lb_sock, 131072, PIN_LB_SOCK);
BPF_TABLE_PINNED("array", u32, u32, lb_config, 1, PIN_LB_CONFIG);

/* The service at addr:port/proto (slot 0). A miss on a node address (the
 * ipcache says host) tries the NodePort wildcard. */
static __always_inline struct lb_val *lb_lookup(struct lb_key *key, const u8 *addr, u16 port,
						u8 proto, u8 family)
{
	struct lb_val *svc;

	__builtin_memset(key, 0, sizeof(*key));
	__builtin_memcpy(key->addr, addr, 16);
	key->port = port;
	key->proto = proto;
	key->family = family;
	svc = lb_services.lookup(key);
	if (svc)
		return svc;
	{
		u32 zero = 0;
		u32 *cfg = lb_config.lookup(&zero);
		struct ipcache_key ik = {};
		struct ipcache_val *iv;

		if (!cfg || !(*cfg & LB_CFG_NODEPORT_ANY))
			return 0;
		ik.family = family;
		ik.prefixlen = family == 4 ? IPCACHE_PREFIX_V4 : IPCACHE_PREFIX_V6;
		__builtin_memcpy(ik.addr, addr, 16);
		iv = ipcache.lookup(&ik);
		if (!iv || iv->identity != IDENTITY_HOST)
			return 0;
	}
	__builtin_memset(key->addr, 0, 16);
	svc = lb_services.lookup(key);
	if (svc && svc->type != LB_TYPE_NODEPORT)
		return 0;
	return svc;
}

/* A backend for a new connection: a random slot (weights are repeated
 * slots). NULL if the service has no backends or is being rewritten. */
static __always_inline struct lb_backend *lb_pick(struct lb_key *key, const struct lb_val *svc,
						  u32 *backend_id)
{
	struct lb_val *slot;

	if (!svc->count)
		return 0;
	key->slot = (u16)(bpf_get_prandom_u32() % svc->count) + 1;
	slot = lb_services.lookup(key);
	key->slot = 0;
	if (!slot)
		return 0;
	*backend_id = slot->backend_id;
	return lb_backends.lookup(backend_id);
}

static __always_inline int lb_trace_on(void)
{
	u32 zero = 0;
	u32 *cfg = lb_config.lookup(&zero);

	return cfg && (*cfg & LB_CFG_TRACE);
}

#endif
