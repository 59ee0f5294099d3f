"""kube-proxy's iptables mode as data, for the services benchmark.

Writes the iptables-restore input that kube-proxy's iptables proxier
(`syncProxyRules`, the v1.16 layout, contemporary with Cilium 1.6) writes
for ClusterIP services with endpoints: KUBE-SERVICES with one
`! -s CLUSTER_CIDR ... -j KUBE-MARK-MASQ` rule and one jump per service
port, then the KUBE-NODEPORTS tail call; a KUBE-SVC-* chain per service port
spreading over its endpoints with `-m statistic --mode random --probability
1/n, 1/(n-1), ...` (the last endpoint without a match); a KUBE-SEP-* chain per
endpoint marking hairpin traffic for SNAT and DNAT'ing; KUBE-MARK-MASQ and
KUBE-POSTROUTING around the 0x4000 mark; the filter table's KUBE-FORWARD. The
jumps from the built-in chains are what kube-proxy inserts with `iptables -I`
at start-up. Chain names are kube-proxy's: "KUBE-SVC-" + the first 16
characters of base32(sha256(servicePortName + protocol)), and likewise with
the endpoint for KUBE-SEP-.

Not covered (the benchmark defines none): NodePorts, external IPs, load
balancers, session affinity, services without endpoints (the filter table's
REJECT rules), IPv6.
"""

import base64
import hashlib
from dataclasses import dataclass

MASQ_MARK = "0x00004000/0x00004000"  # kube-proxy's --iptables-masquerade-bit 14
# Above this many endpoint chains kube-proxy leaves the per-endpoint comments out.
ENDPOINT_COMMENT_LIMIT = 1000

# (table, built-in chain, match arguments, comment, target), in kube-proxy's order;
# each is inserted at the top of its chain.
JUMPS = (
    ("filter", "INPUT", "-m conntrack --ctstate NEW",
     "kubernetes externally-visible service portals", "KUBE-EXTERNAL-SERVICES"),
    ("filter", "FORWARD", "-m conntrack --ctstate NEW", "kubernetes service portals",
     "KUBE-SERVICES"),
    ("filter", "OUTPUT", "-m conntrack --ctstate NEW", "kubernetes service portals",
     "KUBE-SERVICES"),
    ("nat", "OUTPUT", "", "kubernetes service portals", "KUBE-SERVICES"),
    ("nat", "PREROUTING", "", "kubernetes service portals", "KUBE-SERVICES"),
    ("nat", "POSTROUTING", "", "kubernetes postrouting rules", "KUBE-POSTROUTING"),
    ("filter", "FORWARD", "", "kubernetes forwarding rules", "KUBE-FORWARD"),
)
FILTER_CHAINS = ("KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD")
NAT_CHAINS = ("KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ")


@dataclass(frozen=True)
class Service:
    """One port of a ClusterIP service and its endpoints ("ip:port")."""

    namespace: str
    name: str
    port_name: str
    cluster_ip: str
    port: int
    endpoints: tuple
    protocol: str = "TCP"

    @property
    def port_name_string(self):
        """proxy.ServicePortName.String(): "ns/name:port", or "ns/name" for an unnamed port."""
        base = "%s/%s" % (self.namespace, self.name)
        return "%s:%s" % (base, self.port_name) if self.port_name else base


def _hash16(text):
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:16]


def svc_chain(port_name_string, protocol):
    return "KUBE-SVC-" + _hash16(port_name_string + protocol)


def sep_chain(port_name_string, protocol, endpoint):
    return "KUBE-SEP-" + _hash16(port_name_string + protocol + endpoint)


def probability(n):
    """The --probability of the first of n remaining endpoints."""
    return "%0.10f" % (1.0 / n)


def jump_rules():
    """iptables-restore input inserting kube-proxy's jumps from the built-in chains."""
    lines = {"filter": [], "nat": []}
    for table, chain, match, comment, target in JUMPS:
        lines[table].append("-I %s 1 %s-m comment --comment \"%s\" -j %s"
                            % (chain, match + " " if match else "", comment, target))
    return "".join("*%s\n%s\nCOMMIT\n" % (t, "\n".join(lines[t])) for t in ("filter", "nat"))


def removal_input(chains, jumps=True):
    """iptables-restore --noflush input deleting kube-proxy's jumps (if `jumps`) and exactly
    the chains in `chains` ({table: [names]}): flushed by declaring them, then deleted."""
    out = []
    for table in ("filter", "nat"):
        lines = []
        if jumps:
            lines += ["-D %s %s-m comment --comment \"%s\" -j %s"
                      % (chain, match + " " if match else "", comment, target)
                      for t, chain, match, comment, target in JUMPS if t == table]
        names = sorted(chains.get(table, ()))
        lines += [":%s - [0:0]" % c for c in names] + ["-X %s" % c for c in names]
        out.append("*%s\n%s\nCOMMIT\n" % (table, "\n".join(lines)))
    return "".join(out)


def restore_input(services, cluster_cidr):
    """(iptables-restore --noflush input, {table: [chains it declares]}) for these services."""
    filter_rules = [
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" "
        "-m mark --mark %s -j ACCEPT" % MASQ_MARK,
        "-A KUBE-FORWARD -s %s -m comment --comment \"kubernetes forwarding conntrack pod "
        "source rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT" % cluster_cidr,
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack pod "
        "destination rule\" -d %s -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
        % cluster_cidr,
    ]
    nat_chains = list(NAT_CHAINS)
    nat_rules = [
        "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" "
        "-m mark --mark %s -j MASQUERADE" % MASQ_MARK,
        "-A KUBE-MARK-MASQ -j MARK --set-xmark %s" % MASQ_MARK,
    ]
    comments = sum(len(s.endpoints) for s in services) <= ENDPOINT_COMMENT_LIMIT
    for svc in services:
        name, proto = svc.port_name_string, svc.protocol.lower()
        chain = svc_chain(name, proto)
        nat_chains.append(chain)
        match = "-m comment --comment \"%s cluster IP\" -m %s -p %s -d %s/32 --dport %d" % (
            name, proto, proto, svc.cluster_ip, svc.port)
        nat_rules.append("-A KUBE-SERVICES %s ! -s %s -j KUBE-MARK-MASQ" % (match, cluster_cidr))
        nat_rules.append("-A KUBE-SERVICES %s -j %s" % (match, chain))
        comment = "-m comment --comment %s " % name if comments else ""
        n = len(svc.endpoints)
        for i, endpoint in enumerate(svc.endpoints):
            sep = sep_chain(name, proto, endpoint)
            nat_chains.append(sep)
            spread = "-m statistic --mode random --probability %s " % probability(n - i) \
                if i < n - 1 else ""
            nat_rules.append("-A %s %s%s-j %s" % (chain, comment, spread, sep))
            ip = endpoint.rsplit(":", 1)[0]
            nat_rules.append("-A %s %s-s %s/32 -j KUBE-MARK-MASQ" % (sep, comment, ip))
            nat_rules.append("-A %s %s-m %s -p %s -j DNAT --to-destination %s"
                             % (sep, comment, proto, proto, endpoint))
    nat_rules.append(
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must "
        "be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS")
    text = "*filter\n%s\n%s\nCOMMIT\n*nat\n%s\n%s\nCOMMIT\n" % (
        "\n".join(":%s - [0:0]" % c for c in FILTER_CHAINS), "\n".join(filter_rules),
        "\n".join(":%s - [0:0]" % c for c in nat_chains), "\n".join(nat_rules))
    return text, {"filter": list(FILTER_CHAINS), "nat": nat_chains}
