/* Types and maps that endpoint.c (tc) and sock.c (cgroup hooks) share:
 * the ipcache (address -> identity) and the conntrack key. Layouts are the
 * contract in docs/policy.md; the Python side is datapath/maps/ipcache.py
 * and datapath/maps/ct.py.
 */
#ifndef CILIUM_CNI_LIB_SHARED_H
#define CILIUM_CNI_LIB_SHARED_H

#include <uapi/linux/bpf.h>

#ifndef PIN_IPCACHE
#error "PIN_IPCACHE (bpffs path of the ipcache map) must be defined"
#endif

/* ipcache keys: family 8 + pad 24 = 32, then the address. */
#define IPCACHE_PREFIX_V4 (32 + 32)
#define IPCACHE_PREFIX_V6 (32 + 128)

struct ipcache_key {
	u32 prefixlen; /* 32 + address prefix */
	u8 family;     /* 4 or 6 */
	u8 pad[3];
	u8 addr[16]; /* IPv4 in the first 4 bytes */
};

struct ipcache_val {
	u32 identity;
	u32 flags; /* IPCACHE_REMOTE: a pod of another node of the cluster */
};

#define IPCACHE_REMOTE 1

/* One entry per endpoint, direction and connection, in the direction of
 * the packet that created it (conntrack.h). */
struct ct_key {
	u8 saddr[16];
	u8 daddr[16];
	u16 sport; /* big endian, as on the wire */
	u16 dport;
	u8 proto;
	u8 family;
	u8 dir;
	u8 pad;
	u32 ep_id;
};

/* LPM tries require BPF_F_NO_PREALLOC. */
BPF_TABLE_PINNED("lpm_trie", struct ipcache_key, struct ipcache_val,
		 ipcache, 65536, PIN_IPCACHE, BPF_F_NO_PREALLOC);

#endif
