"""Agent errors, and the one mapping from a domain error to HTTP and CNI.

Every error the API returns is `{"error": {"code": CNI code, "message": ...}}`
with the HTTP status of `MAPPING`; the plugin passes the CNI code and message
straight to the runtime (cni.client.error_from_response). A route error is
the agent's (101): the plugin asked for something this agent does not serve,
which says nothing about the container (3) or the network config (7).
"""

from cni import errors as cni


class AgentError(Exception):
    """Any failure of the agent; the base maps to 500 / AGENT_FAILURE."""

    def __init__(self, message, details=""):
        super().__init__(message)
        self.message = message
        self.details = details

    @property
    def status(self):
        return _mapped(type(self))[0]

    @property
    def cni_code(self):
        return _mapped(type(self))[1]

    def headers(self):
        """Extra HTTP response headers."""
        return {}

    def to_body(self):
        err = {"code": self.cni_code, "message": self.message}
        if self.details:
            err["details"] = self.details
        return {"error": err}


class BadRequest(AgentError):
    """The request does not fit the API document, or a value in it is wrong."""


class NotFound(AgentError):
    """No such endpoint (or operation, or service)."""


class UnknownContainer(AgentError):
    """The pod's netns is gone: nothing of the pod is left to act on."""


class RouteNotFound(AgentError):
    """No route for the request's path."""


class MethodNotAllowed(AgentError):
    """The path is served, the method is not."""

    def __init__(self, message, allow=()):
        super().__init__(message)
        self.allow = list(allow)

    def headers(self):
        return {"Allow": ", ".join(self.allow)}


class Conflict(AgentError):
    """The pod interface is another live container's endpoint: an ADD must
    not take it over (its pod would run without policy after our DEL)."""


class InvalidInterface(AgentError):
    """The interface the runtime named is missing or not a veth."""


class Busy(AgentError):
    """The worker's queue stayed full: try again."""


class RequestTimeout(AgentError):
    """The client did not send a complete request in time."""


class PayloadTooLarge(AgentError):
    """The request body is over the agent's limit."""


class UriTooLong(AgentError):
    """The request line is over the agent's limit."""


class HeadersTooLarge(AgentError):
    """The request headers are over the agent's limit."""


class KvstoreUnavailable(AgentError):
    """Shared state is needed from etcd (a new identity, a cluster-wide
    change) and etcd does not answer: try again."""


class DatapathFailure(AgentError):
    """Compiling, attaching or writing the datapath failed."""


# domain error -> (HTTP status, CNI code); agent/api/openapi.yaml shows it too.
MAPPING = {
    AgentError: (500, cni.AGENT_FAILURE),
    BadRequest: (400, cni.INVALID_NETWORK_CONFIG),
    NotFound: (404, cni.UNKNOWN_CONTAINER),
    UnknownContainer: (404, cni.UNKNOWN_CONTAINER),
    RouteNotFound: (404, cni.AGENT_FAILURE),
    MethodNotAllowed: (405, cni.AGENT_FAILURE),
    Conflict: (409, cni.INTERFACE_IN_USE),
    InvalidInterface: (422, cni.INVALID_NETWORK_CONFIG),
    Busy: (503, cni.TRY_AGAIN_LATER),
    RequestTimeout: (408, cni.TRY_AGAIN_LATER),
    PayloadTooLarge: (413, cni.INVALID_NETWORK_CONFIG),
    UriTooLong: (414, cni.INVALID_NETWORK_CONFIG),
    HeadersTooLarge: (431, cni.INVALID_NETWORK_CONFIG),
    DatapathFailure: (500, cni.DATAPATH_FAILURE),
    KvstoreUnavailable: (503, cni.TRY_AGAIN_LATER),
}


def _mapped(cls):
    """The entry of `cls` or of its nearest mapped base."""
    for klass in cls.__mro__:
        if klass in MAPPING:
            return MAPPING[klass]
    raise TypeError("%s is not an agent error" % cls.__name__)


def from_datapath(exc):
    """Map the datapath's netns exceptions to agent errors (one place)."""
    from datapath import netns
    if isinstance(exc, netns.NetnsNotFound):
        return UnknownContainer(str(exc))
    if isinstance(exc, (netns.InterfaceNotFound, netns.NotAVeth)):
        return InvalidInterface(str(exc))
    return DatapathFailure("datapath error: %s" % exc)
