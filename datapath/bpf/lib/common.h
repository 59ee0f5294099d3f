/* What every part of the programs shares: byte order of the contract's
 * fields, the pod's directions, reserved endpoint and identity numbers,
 * and the reasons metrics and events report.
 */
#ifndef CILIUM_CNI_LIB_COMMON_H
#define CILIUM_CNI_LIB_COMMON_H

#include <uapi/linux/bpf.h>

/* The contract's keys hold some fields in network byte order (so that LPM
 * prefixes cover their leading bits). bpf targets are little endian on
 * every architecture we run on (x86_64, arm64). */
#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "big-endian hosts are not supported"
#endif
#define be16(x) ((u16)__builtin_bswap16(x))
#define be32(x) ((u32)__builtin_bswap32(x))

#define NS_PER_SEC 1000000000ULL

/* The direction is the pod's point of view, as in the agent's API. */
#define DIR_INGRESS 1 /* to the pod */
#define DIR_EGRESS 2  /* from the pod */

/* ep_id 0 is never given to an endpoint: it collects traffic seen on a
 * device whose endpoints entry is missing (e.g. between attach and
 * set_endpoint, or after remove_endpoint while the filter is still there),
 * and the NodePort programs' connections. */
#define EP_ID_UNKNOWN 0

#define IDENTITY_HOST 1
#define IDENTITY_WORLD 2

/* metrics reason: 0 counts forwarded packets, the others drops. */
#define REASON_FORWARDED 0
#define REASON_POLICY_DENIED 1 /* default deny: no allow entry matched */
#define REASON_POLICY_DENY 2   /* a deny entry matched */
#define REASON_INVALID 3       /* truncated or malformed headers */
#define REASON_NO_SERVICE 4    /* to a service frontend without backends */

#endif
