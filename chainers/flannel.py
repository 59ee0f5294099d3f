"""flannel: flannel's CNI plugin delegates to `bridge` on `cni0` with
host-local IPAM for the node's flannel subnet, so the pod's network is
bridge-shaped and prevResult is bridge's full result (host veth, container
interface, IPs with interface indexes).

Datapath needs: ARP passes untouched, routes and the VXLAN overlay are
flannel's, external IPAM.
"""

from chainers.api import register
from chainers.generic_veth import GenericVeth


class Flannel(GenericVeth):
    name = "flannel"
    prior_types = ("flannel",)


register(Flannel.name, Flannel())
