"""Agent errors, and the one mapping from a domain error to HTTP and CNI.

Every error the API returns is `{"error": {"code": CNI code, "message": ...}}`
with the HTTP status below; the plugin passes the CNI code and message
straight to the runtime (cni.client.error_from_response).
"""

from cni import errors as cni


class AgentError(Exception):
    status = 500
    cni_code = cni.AGENT_FAILURE

    def __init__(self, message, details=""):
        super().__init__(message)
        self.message = message
        self.details = details

    def to_body(self):
        err = {"code": self.cni_code, "message": self.message}
        if self.details:
            err["details"] = self.details
        return {"error": err}


class BadRequest(AgentError):
    status = 400
    cni_code = cni.INVALID_NETWORK_CONFIG


class NotFound(AgentError):
    status = 404
    cni_code = cni.UNKNOWN_CONTAINER


class UnknownContainer(AgentError):
    """The pod's netns is gone: nothing of the pod is left to act on."""
    status = 404
    cni_code = cni.UNKNOWN_CONTAINER


class InvalidInterface(AgentError):
    """The interface the runtime named is missing or not a veth."""
    status = 422
    cni_code = cni.INVALID_NETWORK_CONFIG


class Busy(AgentError):
    status = 503
    cni_code = cni.TRY_AGAIN_LATER


class DatapathFailure(AgentError):
    status = 500
    cni_code = cni.DATAPATH_FAILURE


def from_datapath(exc):
    """Map the datapath's netns exceptions to agent errors (one place)."""
    from datapath import netns
    if isinstance(exc, netns.NetnsNotFound):
        return UnknownContainer(str(exc))
    if isinstance(exc, (netns.InterfaceNotFound, netns.NotAVeth)):
        return InvalidInterface(str(exc))
    return DatapathFailure("datapath error: %s" % exc)
