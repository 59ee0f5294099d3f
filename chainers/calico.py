"""calico: pods on routed veths named `cali` + sha1("<namespace>.<pod>")[:11].

What Calico leaves (cni-plugin/pkg/dataplane/linux, k8s.go): a veth whose
host end has MAC ee:ee:ee:ee:ee:ee and proxy-ARP on, a /32 host route per
pod IP, no bridge; in the pod a /32 address and a default route via
169.254.1.1, which the host answers by proxy-ARP. Its prevResult lists only
one interface up to 3.30 (the *host* veth's name with the container's MAC
and netns) and IPs without an interface index; 3.31 and later list both
ends. So the host device comes from the kernel (veth peer of CNI_IFNAME),
never from prevResult.

Datapath needs: ARP passes untouched (the host's proxy-ARP answers the
pod), Calico's routes and sysctls are left alone, external IPAM.
"""

from chainers.api import register
from chainers.generic_veth import GenericVeth


def pod_suffix(namespace, pod):
    """sha1("<namespace>.<pod>")[:11], as Calico and the AWS VPC CNI name veths."""
    import _sha1  # the C module itself: hashlib would cost an OpenSSL load per call
    return _sha1.sha1(("%s.%s" % (namespace, pod)).encode()).hexdigest()[:11]


def pod_veth_name(prefix, args):
    """prefix + pod_suffix of the pod in CNI_ARGS, or None without one."""
    if args.k8s_namespace and args.k8s_pod_name:
        return prefix + pod_suffix(args.k8s_namespace, args.k8s_pod_name)
    return None


class Calico(GenericVeth):
    name = "calico"
    prior_types = ("calico",)

    def host_hint(self, ctx):
        return pod_veth_name("cali", ctx.args)


register(Calico.name, Calico())
