"""aws-vpc (alias aws-cni): pods on routed veths named `eni` +
sha1("<namespace>.<pod>")[:11], addresses from the VPC.

What the AWS VPC CNI leaves (cmd/routed-eni-cni-plugin/driver): a /32 host
route per pod IP, policy-routing rules (to pod: main table, priority 512;
from pod: the ENI's table, priority 1536), in the pod a /32 address, a
default route via 169.254.1.1 and a permanent neighbour entry for it with
the host veth's MAC (so the pod never ARPs for its gateway). Its conflist
is cniVersion 0.4.0 with `disableCheck: true`. Its prevResult appends a
`dummy…` interface whose `mac` and `sandbox` carry numbers (VLAN id,
device number) that its own DEL reads back by name and position; older
versions list no interfaces. prevResult passes through untouched.

Datapath needs: ARP passes untouched, AWS's routes and rules are left
alone, external IPAM (ipamd).
"""

from chainers.api import register
from chainers.calico import pod_veth_name
from chainers.generic_veth import GenericVeth


class AwsVpc(GenericVeth):
    name = "aws-vpc"
    prior_types = ("aws-cni",)

    def host_hint(self, ctx):
        return pod_veth_name("eni", ctx.args)


register(AwsVpc.name, AwsVpc())
register("aws-cni", AwsVpc())  # Cilium's name for the same mode
