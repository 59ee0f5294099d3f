/* The packet parser: from an Ethernet frame to the tuple conntrack and
 * policy work on (addresses, protocol, ports, TCP flags), or the verdict
 * that the frame needs none (ARP, neighbour discovery, MLD, non-IP) or is
 * malformed.
 */
#ifndef CILIUM_CNI_LIB_PARSE_H
#define CILIUM_CNI_LIB_PARSE_H

#include <uapi/linux/bpf.h>
#include "uapi.h"

#include "common.h"

/* Neighbour discovery's ICMPv6 types, router solicitation to redirect (the
 * kernel's NDISC_* of net/ndisc.h, which is not a uapi header). */
#define NDISC_ROUTER_SOLICITATION 133
#define NDISC_REDIRECT 137

/* TCP flag bits of the header's 14th byte (the kernel's TCPHDR_* of
 * net/tcp.h, not a uapi header either). */
#define TCPHDR_FIN 0x01
#define TCPHDR_SYN 0x02
#define TCPHDR_RST 0x04
#define TCPHDR_ACK 0x10

/* What the parser extracts from a packet. Addresses are raw bytes (IPv4 in
 * the first 4), ports in network order as ct keys want them. */
struct tuple {
	u8 saddr[16];
	u8 daddr[16];
	u16 sport;
	u16 dport;
	u8 proto;
	u8 family;
	u8 tcp_flags;
	u8 l4off; /* offset of the L4 header in the frame */
};

enum parse_result {
	PARSE_L3,      /* IPv4/IPv6: goes through ct and policy */
	PARSE_PASS,    /* ARP, neighbour discovery, non-IP: always passes */
	PARSE_INVALID, /* truncated headers */
};

/* Ports of TCP, UDP and SCTP sit in the same first 4 bytes. */
static __always_inline int parse_l4(struct __sk_buff *skb, u32 off, struct tuple *t)
{
	u8 icmp[6]; /* type, code, checksum, echo id */

	switch (t->proto) {
	case IPPROTO_TCP: {
		u8 hdr[14]; /* up to the flags byte */

		if (bpf_skb_load_bytes(skb, off, hdr, sizeof(hdr)) < 0)
			return PARSE_INVALID;
		__builtin_memcpy(&t->sport, &hdr[0], 2);
		__builtin_memcpy(&t->dport, &hdr[2], 2);
		t->tcp_flags = hdr[13];
		return PARSE_L3;
	}
	case IPPROTO_UDP:
	case IPPROTO_SCTP:
		if (bpf_skb_load_bytes(skb, off, &t->sport, 4) < 0)
			return PARSE_INVALID;
		return PARSE_L3;
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6:
		if (bpf_skb_load_bytes(skb, off, icmp, sizeof(icmp)) < 0)
			return PARSE_INVALID;
		if (t->proto == IPPROTO_ICMPV6 && icmp[0] >= NDISC_ROUTER_SOLICITATION &&
		    icmp[0] <= NDISC_REDIRECT)
			return PARSE_PASS;
		/* Echo request and reply carry the same id both ways: as both
		 * ports it makes a reply the exact reverse of its request. Any
		 * other ICMP message has port 0. */
		if ((t->proto == IPPROTO_ICMP && (icmp[0] == ICMP_ECHO || icmp[0] == ICMP_ECHOREPLY)) ||
		    (t->proto == IPPROTO_ICMPV6 &&
		     (icmp[0] == ICMPV6_ECHO_REQUEST || icmp[0] == ICMPV6_ECHO_REPLY))) {
			__builtin_memcpy(&t->sport, &icmp[4], 2);
			t->dport = t->sport;
		}
		return PARSE_L3;
	}
	/* Another protocol (or an IPv6 extension header, which we do not
	 * walk): its number with port 0. */
	return PARSE_L3;
}

/* Multicast listener discovery: ICMPv6 behind a hop-by-hop header (router
 * alert). Like neighbour discovery it is link-local control traffic that
 * bridges and routers need (snooping), not a connection to a peer. */
static __always_inline int is_mld(struct __sk_buff *skb)
{
	u32 hop_off = ETH_HLEN + sizeof(struct ipv6hdr);
	u8 hop[2], type;

	if (bpf_skb_load_bytes(skb, hop_off, hop, sizeof(hop)) < 0 || hop[0] != IPPROTO_ICMPV6)
		return 0;
	if (bpf_skb_load_bytes(skb, hop_off + ((u32)hop[1] + 1) * 8, &type, 1) < 0)
		return 0;
	return type == ICMPV6_MGM_QUERY || type == ICMPV6_MGM_REPORT || type == ICMPV6_MGM_REDUCTION ||
	       type == ICMPV6_MLD2_REPORT;
}

static __always_inline int parse(struct __sk_buff *skb, struct tuple *t)
{
	u16 proto;

	if (bpf_skb_load_bytes(skb, offsetof(struct ethhdr, h_proto), &proto, 2) < 0)
		return PARSE_INVALID;
	if (proto == be16(ETH_P_IP)) {
		u8 ip[sizeof(struct iphdr)];
		u32 ihl;
		u16 frag;

		if (bpf_skb_load_bytes(skb, ETH_HLEN, ip, sizeof(ip)) < 0)
			return PARSE_INVALID;
		ihl = (ip[0] & 0x0f) * 4;
		if ((ip[0] >> 4) != 4 || ihl < sizeof(struct iphdr))
			return PARSE_INVALID;
		t->family = 4;
		t->proto = ip[offsetof(struct iphdr, protocol)];
		__builtin_memcpy(t->saddr, &ip[offsetof(struct iphdr, saddr)], 4);
		__builtin_memcpy(t->daddr, &ip[offsetof(struct iphdr, daddr)], 4);
		/* A non-first fragment has no L4 header: port 0. */
		frag = ((u16)(ip[6] & 0x1f) << 8) | ip[7];
		if (frag)
			return PARSE_L3;
		t->l4off = ETH_HLEN + ihl;
		return parse_l4(skb, ETH_HLEN + ihl, t);
	}
	if (proto == be16(ETH_P_IPV6)) {
		u8 ip6[sizeof(struct ipv6hdr)];

		if (bpf_skb_load_bytes(skb, ETH_HLEN, ip6, sizeof(ip6)) < 0)
			return PARSE_INVALID;
		if ((ip6[0] >> 4) != 6)
			return PARSE_INVALID;
		t->family = 6;
		t->proto = ip6[offsetof(struct ipv6hdr, nexthdr)];
		__builtin_memcpy(t->saddr, &ip6[offsetof(struct ipv6hdr, saddr)], 16);
		__builtin_memcpy(t->daddr, &ip6[offsetof(struct ipv6hdr, daddr)], 16);
		if (t->proto == IPPROTO_HOPOPTS && is_mld(skb))
			return PARSE_PASS;
		t->l4off = ETH_HLEN + sizeof(struct ipv6hdr);
		return parse_l4(skb, ETH_HLEN + sizeof(struct ipv6hdr), t);
	}
	/* ARP, and anything else that is not IP (LLDP, ...): policy is about
	 * IP peers. */
	return PARSE_PASS;
}

#endif
