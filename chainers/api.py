"""What a chainer is, the context it gets, and the one registry of chainers.

A chainer knows the prior plugin's *shape*: how it names the host device,
what its prevResult leaves out, and what the datapath needs for that plugin.
It turns a CNI call into agent requests; it never talks netlink or eBPF (the
agent's datapath does that, once for all chainers).
"""

from cni.errors import INVALID_NETWORK_CONFIG, CniError


class Context:
    """Everything one CNI call knows, passed explicitly to the chainer."""

    __slots__ = ("args", "conf", "prev_result", "client", "log", "chainer")

    def __init__(self, args, conf, prev_result, client, log, chainer=None):
        self.args = args            # cni.env.CniArgs
        self.conf = conf            # cni.netconf.NetConf
        self.prev_result = prev_result  # dict in conf.cni_version, or None
        self.client = client        # cni.client.AgentClient
        self.log = log              # cni.log.PluginLog
        self.chainer = chainer      # the chainer serving this call


_REGISTRY = {}


def register(name, chainer):
    if name in _REGISTRY:
        raise ValueError("chainer %r registered twice" % name)
    _REGISTRY[name] = chainer


def names():
    return sorted(_REGISTRY)


def lookup(mode):
    if mode is None:
        raise CniError(
            INVALID_NETWORK_CONFIG,
            "no chaining mode: set \"chaining-mode\" in the cilium-cni entry of the "
            "conflist to one of: %s" % ", ".join(names()))
    chainer = _REGISTRY.get(mode)
    if chainer is None:
        raise CniError(
            INVALID_NETWORK_CONFIG,
            "unknown chaining mode '%s': valid modes are %s" % (mode, ", ".join(names())))
    return chainer
