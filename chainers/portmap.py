"""portmap: a veth-shaped prior plugin plus the `portmap` plugin for
hostPorts, before or after cilium-cni in the conflist.

portmap DNATs a host port to the pod in iptables (PREROUTING and OUTPUT)
before the packet reaches the pod's host veth, so the to-container program
sees the pod as destination and the original client as source: ingress
policy applies to the client's identity. With portmap's `snat` (hairpin
and localhost clients are masqueraded) the source is the node: identity
`host`. portmap passes prevResult through, so placed before cilium-cni it
changes nothing we read.

Datapath needs: as generic-veth; portmap's iptables rules are its own.
"""

from chainers.api import register
from chainers.generic_veth import GenericVeth


class Portmap(GenericVeth):
    name = "portmap"

    def conflist_problem(self, types):
        if "portmap" not in types:
            return "chaining mode portmap expects the portmap plugin in the conflist"
        if types[0] in ("portmap", "cilium-cni"):
            return "chaining mode portmap expects the pod's network plugin first, not %s" % types[0]
        return None


register(Portmap.name, Portmap())
