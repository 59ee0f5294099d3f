"""Protocols and port ranges as the datapath's prefix blocks (docs/policy.md).

A policy entry matches ports by prefix: `(port, port_plen)` covers the ports
whose first `port_plen` bits equal those of `port` (plen 0 = any port,
16 = exactly `port`). `port_range_blocks` turns an inclusive range into the
minimal list of such aligned blocks. Nothing here knows about rules.
"""

TCP, UDP, SCTP = 6, 17, 132
PROTOCOLS = {"TCP": (TCP,), "UDP": (UDP,), "SCTP": (SCTP,), "ANY": (TCP, UDP, SCTP)}
MAX_PORT = 65535


def port_range_blocks(lo, hi):
    """Minimal aligned (port, plen) blocks exactly covering lo..hi inclusive."""
    if not (0 <= lo <= hi <= MAX_PORT):
        raise ValueError("bad port range %r..%r" % (lo, hi))
    blocks = []
    while lo <= hi:
        size = (lo & -lo) if lo else 1 << 16
        while size > hi - lo + 1:
            size >>= 1
        blocks.append((lo, 17 - size.bit_length()))
        lo += size
    return blocks


def block_matches(port, plen, dport):
    """True when the first `plen` bits of `dport` equal those of `port`."""
    shift = 16 - plen
    return (dport >> shift) == (port >> shift)


class PortSpec:
    """One `toPorts[].ports[]` element: protocol name, port, optional endPort.

    Port 0 without endPort means every port of the protocol, as in Cilium.
    """

    __slots__ = ("protocol", "port", "end_port")

    def __init__(self, protocol, port, end_port=None):
        self.protocol, self.port, self.end_port = protocol, port, end_port

    def __repr__(self):
        rng = "%d-%d" % (self.port, self.end_port) if self.end_port is not None else str(self.port)
        return "%s/%s" % (rng, self.protocol)

    def __eq__(self, other):
        return isinstance(other, PortSpec) and (self.protocol, self.port, self.end_port) == (
            other.protocol, other.port, other.end_port)

    def __hash__(self):
        return hash((self.protocol, self.port, self.end_port))

    def blocks(self):
        """The entry triples (proto, port, port_plen) this spec stands for."""
        if self.port == 0:
            ranges = [(0, 0)]
        elif self.end_port is None:
            ranges = [(self.port, 16)]
        else:
            ranges = port_range_blocks(self.port, self.end_port)
        return [(proto, port, plen) for proto in PROTOCOLS[self.protocol] for port, plen in ranges]

    def matches(self, proto, dport):
        """Direct evaluation (no blocks), for the reference verdict."""
        if proto not in PROTOCOLS[self.protocol]:
            return False
        if self.port == 0:
            return True
        return self.port <= dport <= (self.end_port if self.end_port is not None else self.port)
