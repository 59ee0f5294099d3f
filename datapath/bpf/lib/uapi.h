/* The kernel's uapi definitions the programs use: protocol numbers,
 * header layouts, ICMP types. Include this instead of the uapi headers
 * themselves.
 *
 * Why a header of its own: uapi/linux/in.h and tcp.h include
 * <linux/socket.h>, which under bcc resolves to the kernel's internal
 * header (not the uapi one) and pulls most of the kernel in with it: a
 * compile of endpoint.c took 1.03 s instead of 0.63 s. All they need of it
 * is what uapi/linux/socket.h defines, so that one is included and the
 * internal one skipped by its include guard. uapi/linux/icmp.h needs a
 * complete `struct sockaddr` (through if.h), which only the internal header
 * has, so the two ICMP echo types it would give are defined below, as are
 * the two address families the FIB lookup takes (also internal-only).
 */
#ifndef CILIUM_CNI_LIB_UAPI_H
#define CILIUM_CNI_LIB_UAPI_H

#include <uapi/linux/socket.h>
#ifndef _LINUX_SOCKET_H
#define _LINUX_SOCKET_H
#define CILIUM_CNI_SKIPPED_SOCKET_H
#endif
#include <uapi/linux/in.h>
#include <uapi/linux/tcp.h>
#ifdef CILIUM_CNI_SKIPPED_SOCKET_H
#undef _LINUX_SOCKET_H
#undef CILIUM_CNI_SKIPPED_SOCKET_H
#endif

#include <uapi/linux/if_ether.h>
#include <uapi/linux/in6.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/udp.h>
#include <uapi/linux/icmpv6.h>

/* uapi/linux/icmp.h (RFC 792) */
#ifndef ICMP_ECHOREPLY
#define ICMP_ECHOREPLY 0
#endif
#ifndef ICMP_ECHO
#define ICMP_ECHO 8
#endif
/* include/linux/socket.h */
#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif

#endif
