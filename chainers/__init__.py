"""Every chaining mode, imported in one visible place so each registers itself."""

from chainers import (  # noqa: F401
    aws_vpc,  # aws-vpc, and its alias aws-cni
    calico,
    flannel,
    generic_veth,
    portmap,
    weave,
)
