"""CNI error codes and the one exception type the plugin raises.

Every failure the runtime sees is a `CniError` turned into the spec's error
object by `cni.plugin`; nothing else reaches stdout. Codes 1-99 are the
spec's well-known codes; 100 and up are this plugin's own.

Hot path: standard library only, and nothing heavier than builtins.
"""

INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODING_FAILURE = 6
INVALID_NETWORK_CONFIG = 7
TRY_AGAIN_LATER = 11
PLUGIN_NOT_AVAILABLE = 50
# Plugin-specific (the spec leaves 100+ to plugins).
DATAPATH_FAILURE = 100
AGENT_FAILURE = 101
# The netns's interface is another live container's endpoint.
INTERFACE_IN_USE = 102


class CniError(Exception):
    """A failure with a CNI error code and a message a human can act on."""

    __slots__ = ("code", "msg", "details")

    def __init__(self, code, msg, details=""):
        super().__init__(msg)
        self.code = int(code)
        self.msg = msg
        self.details = details

    def to_dict(self, cni_version):
        out = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out

    def __repr__(self):
        return "CniError(%d, %r)" % (self.code, self.msg)
