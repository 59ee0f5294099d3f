/* Socket-based service load-balancing: cgroup v2 sock_addr hooks.
 *
 * connect4/6 (TCP and connected UDP) and sendmsg4/6 (unconnected UDP)
 * replace a service frontend by a backend before the kernel routes
 * anything, so the packets carry the backend from the start and the
 * per-packet path has nothing to do. recvmsg4/6 and getpeername4/6 put the
 * frontend back where the application looks (the source of a datagram,
 * the peer of a connected socket), from lb_sock: socket cookie + backend
 * -> frontend. A socket that is not to a service is left exactly as it
 * was (return 1, nothing written): these programs run for every process
 * below the cgroup they are attached to.
 *
 * A frontend without backends fails connect()/sendmsg() at once with
 * ECONNREFUSED (bpf_set_retval; returning 0 alone would give EPERM).
 */
#include <uapi/linux/bpf.h>
#include "lib/uapi.h"
#include <uapi/asm-generic/errno.h>

#include "lib/common.h"
#include "lib/lb.h"
#include "lib/shared.h"

#define EVENT_LB_SOCK 101

/* The monitor's event (lib/drop.h's struct drop_event; events.EVENT),
 * raised per translated socket while lb_config asks for it. */
struct sock_event {
	u64 time;
	u32 ep_id, src_identity, dst_identity;
	u8 saddr[16];
	u8 daddr[16];
	u16 sport, dport; /* host order */
	u8 proto, family, dir, reason;
	u32 pid; /* the drop event's ifindex */
	u32 len;
	u16 xport; /* host order */
	u16 svc_id;
	u8 xaddr[16];
};

BPF_PERF_OUTPUT(events);

/* The peer address of a socket call (IPv4 in the first 4 bytes of addr);
 * the context's words are read and written one u32 at a time, as the
 * verifier requires. */
static __always_inline void peer_get(struct bpf_sock_addr *ctx, u8 family, u8 *addr)
{
	if (family == 4) {
		u32 a = ctx->user_ip4;

		__builtin_memcpy(addr, &a, 4);
	} else {
		u32 a0 = ctx->user_ip6[0], a1 = ctx->user_ip6[1], a2 = ctx->user_ip6[2],
		    a3 = ctx->user_ip6[3];

		__builtin_memcpy(&addr[0], &a0, 4);
		__builtin_memcpy(&addr[4], &a1, 4);
		__builtin_memcpy(&addr[8], &a2, 4);
		__builtin_memcpy(&addr[12], &a3, 4);
	}
}

static __always_inline void peer_set(struct bpf_sock_addr *ctx, u8 family, const u8 *addr, u16 port)
{
	if (family == 4) {
		u32 a;

		__builtin_memcpy(&a, addr, 4);
		ctx->user_ip4 = a;
	} else {
		u32 a0, a1, a2, a3;

		__builtin_memcpy(&a0, &addr[0], 4);
		__builtin_memcpy(&a1, &addr[4], 4);
		__builtin_memcpy(&a2, &addr[8], 4);
		__builtin_memcpy(&a3, &addr[12], 4);
		ctx->user_ip6[0] = a0;
		ctx->user_ip6[1] = a1;
		ctx->user_ip6[2] = a2;
		ctx->user_ip6[3] = a3;
	}
	ctx->user_port = port;
}

static __always_inline int sock_xlate(struct bpf_sock_addr *ctx, u8 family, u8 proto)
{
	u8 addr[16] = {};
	struct lb_key key;
	struct lb_val *svc;
	struct lb_backend *be;
	struct lb_sock_key sk = {};
	struct lb_sock_val sv = {};
	u32 backend_id = 0;
	u16 port = (u16)ctx->user_port;

	peer_get(ctx, family, addr);
	svc = lb_lookup(&key, addr, port, proto, family);
	if (!svc)
		return 1;
	be = lb_pick(&key, svc, &backend_id);
	if (!be) {
		bpf_set_retval(-ECONNREFUSED);
		return 0;
	}
	sk.cookie = bpf_get_socket_cookie(ctx);
	__builtin_memcpy(sk.addr, be->addr, 16);
	sk.port = be->port;
	sk.family = family;
	__builtin_memcpy(sv.addr, addr, 16);
	sv.port = port;
	sv.svc_id = svc->svc_id;
	lb_sock.update(&sk, &sv);
	if (lb_trace_on()) {
		struct sock_event ev = {};

		ev.time = bpf_ktime_get_ns();
		__builtin_memcpy(ev.daddr, addr, 16);
		ev.dport = be16(port);
		ev.proto = proto;
		ev.family = family;
		ev.dir = DIR_EGRESS;
		ev.reason = EVENT_LB_SOCK;
		ev.pid = bpf_get_current_pid_tgid() >> 32;
		ev.xport = be16(be->port);
		ev.svc_id = svc->svc_id;
		__builtin_memcpy(ev.xaddr, be->addr, 16);
		events.perf_submit(ctx, &ev, sizeof(ev));
	}
	peer_set(ctx, family, be->addr, be->port);
	return 1;
}

/* The peer the application sees: the frontend, if this socket's peer is a
 * backend it was sent to. */
static __always_inline int sock_rev(struct bpf_sock_addr *ctx, u8 family)
{
	struct lb_sock_key sk = {};
	struct lb_sock_val *sv;

	sk.cookie = bpf_get_socket_cookie(ctx);
	sk.family = family;
	sk.port = (u16)ctx->user_port;
	peer_get(ctx, family, sk.addr);
	sv = lb_sock.lookup(&sk);
	if (!sv)
		return 1;
	peer_set(ctx, family, sv->addr, sv->port);
	return 1;
}

static __always_inline u8 sock_proto(struct bpf_sock_addr *ctx)
{
	return ctx->protocol == IPPROTO_UDP ? IPPROTO_UDP : IPPROTO_TCP;
}

int sock_connect4(struct bpf_sock_addr *ctx)
{
	if (ctx->protocol != IPPROTO_TCP && ctx->protocol != IPPROTO_UDP)
		return 1;
	return sock_xlate(ctx, 4, sock_proto(ctx));
}

int sock_connect6(struct bpf_sock_addr *ctx)
{
	if (ctx->protocol != IPPROTO_TCP && ctx->protocol != IPPROTO_UDP)
		return 1;
	return sock_xlate(ctx, 6, sock_proto(ctx));
}

int sock_sendmsg4(struct bpf_sock_addr *ctx)
{
	return sock_xlate(ctx, 4, IPPROTO_UDP);
}

int sock_sendmsg6(struct bpf_sock_addr *ctx)
{
	return sock_xlate(ctx, 6, IPPROTO_UDP);
}

int sock_recvmsg4(struct bpf_sock_addr *ctx)
{
	return sock_rev(ctx, 4);
}

int sock_recvmsg6(struct bpf_sock_addr *ctx)
{
	return sock_rev(ctx, 6);
}

int sock_getpeername4(struct bpf_sock_addr *ctx)
{
	return sock_rev(ctx, 4);
}

int sock_getpeername6(struct bpf_sock_addr *ctx)
{
	return sock_rev(ctx, 6);
}
