"""The API resources the agent reads, and the URL path of each collection."""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Resource:
    group: str          # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool

    @property
    def api_version(self):
        return "%s/%s" % (self.group, self.version) if self.group else self.version

    def path(self, namespace=None):
        """The collection's path: every namespace (namespace None) or one."""
        base = "/apis/%s/%s" % (self.group, self.version) if self.group else "/api/v1"
        if namespace is not None:
            if not self.namespaced:
                raise ValueError("%s is cluster-scoped: no namespace" % self.kind)
            base += "/namespaces/" + namespace
        return "%s/%s" % (base, self.plural)


PODS = Resource("", "v1", "pods", "Pod", True)
NAMESPACES = Resource("", "v1", "namespaces", "Namespace", False)
SERVICES = Resource("", "v1", "services", "Service", True)
ENDPOINT_SLICES = Resource("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", True)
NETWORK_POLICIES = Resource("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", True)
CILIUM_NETWORK_POLICIES = Resource("cilium.io", "v2", "ciliumnetworkpolicies",
                                   "CiliumNetworkPolicy", True)
CILIUM_CLUSTERWIDE_NETWORK_POLICIES = Resource("cilium.io", "v2",
                                               "ciliumclusterwidenetworkpolicies",
                                               "CiliumClusterwideNetworkPolicy", False)
ALL = (PODS, NAMESPACES, SERVICES, ENDPOINT_SLICES, NETWORK_POLICIES, CILIUM_NETWORK_POLICIES,
       CILIUM_CLUSTERWIDE_NETWORK_POLICIES)
