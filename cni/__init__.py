"""cilium-cni: a chained CNI plugin with an eBPF datapath."""

__version__ = "0.1.0"
