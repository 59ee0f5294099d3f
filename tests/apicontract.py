"""Responses checked against the agent's API document (agent/api/openapi.yaml).

`check_response(method, url, status, body)` fails (AssertionError) when a
response is not one the document declares for that operation and status
(or, for a request no route serves, not the declared error body with 404
or 405). `CheckedClient` is the agent client of the tests: every response
a test gets from a real agent goes through it (tests/lab.py Agent.client).
"""

from agent.router import Router, load_document, operations
from cni.client import AgentClient

DOCUMENT = load_document()
ROUTER = Router(DOCUMENT, {op["operationId"]: None for _, _, op in operations(DOCUMENT)})
_validators = {}


def _escape(token):
    return token.replace("~", "~0").replace("/", "~1")


def _response_pointer(template, method, status):
    """JSON pointer of the schema declared for this response, or None."""
    responses = DOCUMENT["paths"][template][method.lower()]["responses"]
    key = str(status) if str(status) in responses else "default"
    if key not in responses:
        return None
    pointer = "/paths/%s/%s/responses/%s" % (_escape(template), method.lower(), key)
    response = responses[key]
    if "$ref" in response:
        pointer = response["$ref"][1:]
        response = DOCUMENT["components"]["responses"][pointer.rsplit("/", 1)[1]]
    media = next(iter(response.get("content", {})), None)
    return media and "%s/content/%s/schema" % (pointer, _escape(media))


def _validator(pointer):
    if pointer not in _validators:
        _validators[pointer] = ROUTER.validator(pointer)
    return _validators[pointer]


def problems(method, url, status, body):
    """What is wrong with this response, as a list of messages (none: fine)."""
    found = ROUTER.find(method, url)
    if found is None and status not in (404, 405):
        return ["%s %s has no route, yet answered %d" % (method, url, status)]
    pointer = found and _response_pointer(found[0], method, status)
    if found and pointer is None:
        return ["%s %s (%s): status %d is not declared" % (method, url, found[1], status)]
    if status >= 400:  # every error, routed or not, is the one Error body
        pointer = "/components/schemas/Error"
    return ["%s %s -> %d: %s at %s" % (method, url, status, e.message,
                                       "/".join(str(p) for p in e.absolute_path) or "the top")
            for e in _validator(pointer).iter_errors(body)]


def check_response(method, url, status, body):
    wrong = problems(method, url, status, body)
    assert not wrong, "response not as agent/api/openapi.yaml declares: %s" % "; ".join(wrong)


class CheckedClient(AgentClient):
    """The plugin's client, checking every response it gets against the document."""

    __slots__ = ()

    def request(self, method, url, body=None, timeout=None):
        status, data = super().request(method, url, body, timeout)
        check_response(method, url, status, data)
        return status, data
