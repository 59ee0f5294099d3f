"""weave: pods on the `weave` bridge through veths named `vethwepl` + the
first 7 characters of the container id.

Weave Net's plugin answers in cniVersion 0.3.0 with IPs and a gateway and
no `interfaces` at all, so nothing in prevResult names either end of the
veth; the agent resolves the host end from the kernel.

Datapath needs: ARP passes untouched (bridged L2), the bridge and routes
are Weave's, external IPAM (Weave's own allocator).
"""

from chainers.api import register
from chainers.generic_veth import GenericVeth


class Weave(GenericVeth):
    name = "weave"
    prior_types = ("weave-net",)

    def host_hint(self, ctx):
        return "vethwepl" + ctx.args.container_id[:7]


register(Weave.name, Weave())
