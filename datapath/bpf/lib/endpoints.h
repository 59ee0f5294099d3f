/* The endpoints map: host veth ifindex -> endpoint id, identity and the
 * directions its policy enforces (datapath/maps/endpoints.py).
 */
#ifndef CILIUM_CNI_LIB_ENDPOINTS_H
#define CILIUM_CNI_LIB_ENDPOINTS_H

#include <uapi/linux/bpf.h>

#ifndef PIN_ENDPOINTS
#error "PIN_ENDPOINTS (bpffs path of the endpoints map) must be defined"
#endif

/* endpoints flags: which directions default-deny (step 3 of the verdict). */
#define EP_F_INGRESS_ENFORCED 1
#define EP_F_EGRESS_ENFORCED 2

struct ep_info {
	u32 ep_id;
	u32 identity;
	u32 flags;
	u32 pad;
};

BPF_TABLE_PINNED("hash", u32, struct ep_info, endpoints, 65536, PIN_ENDPOINTS);

#endif
