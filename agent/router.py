"""The API's routing table and request checks, built from its OpenAPI
document (agent/api/openapi.yaml, the contract).

`Router(document, handlers)` maps each (method, path template) of the
document to the handler named by its operationId, and compiles one
jsonschema validator per parameter and request body, once, at start. A
request then becomes (handler, Request) or an error that names what was
wrong: no such route (404), a method the path does not serve (405, with the
methods it does), a parameter or body that does not fit its schema (400).
A document operation without a handler, or a handler without an operation,
is refused at start. It knows nothing of what handlers do, and checks only
what the document declares: rules across fields (the endpoint key in the
path and in the body) stay with the handlers.
"""

import functools
import os
from urllib.parse import parse_qsl, unquote

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from agent.errors import BadRequest, MethodNotAllowed, RouteNotFound
from agent.schema_errors import body_message, first_error, parameter_message

DOCUMENT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "api", "openapi.yaml")
HTTP_METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
_URI = "urn:cilium-cni:agent-api"  # the document's name for its validators' $refs
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@functools.lru_cache(maxsize=None)
def load_document(path=DOCUMENT_PATH):
    with open(path) as f:
        return yaml.load(f, Loader=_LOADER)


def operations(document):
    """(METHOD, path template, operation) for every operation of the document."""
    for template, item in document["paths"].items():
        for method in HTTP_METHODS:
            if method in item:
                yield method.upper(), template, item[method]


class Request:
    """One request as the handler sees it: checked against the document."""

    __slots__ = ("method", "path", "params", "query", "body")

    def __init__(self, method, path, params, query, body):
        self.method = method
        self.path = path      # the path as sent, without the query
        self.params = params  # path parameters, e.g. {"key": "ctr:eth0"}
        self.query = query    # query parameters, each once (the last one given)
        self.body = body      # decoded JSON, or None


class _Parameter:
    __slots__ = ("name", "where", "required", "label", "validator")

    def __init__(self, spec, validator):
        self.name = spec["name"]
        self.where = spec["in"]
        self.required = spec.get("required", False)
        self.label = spec.get("schema", {}).get("title") or "%s parameter '%s'" % (
            self.where, self.name)
        self.validator = validator

    def check(self, value):
        error = first_error(self.validator, value)
        if error is not None:
            raise BadRequest(parameter_message(self.label, value, error))


class _Route:
    __slots__ = ("method", "template", "operation_id", "handler", "parameters", "body",
                 "body_required", "body_label")


class Router:
    def __init__(self, document, handlers):
        self._document = document
        self._registry = Registry().with_resource(_URI, DRAFT202012.create_resource(document))
        declared = {op["operationId"] for _, _, op in operations(document)}
        missing, extra = declared - set(handlers), set(handlers) - declared
        if missing or extra:
            raise ValueError("API document and handlers differ: no handler for %s; "
                             "not in the document: %s" % (sorted(missing) or "none",
                                                          sorted(extra) or "none"))
        self._paths = {}  # template segments -> {METHOD: _Route}
        for method, template, op in operations(document):
            route = self._route(method, template, op, handlers[op["operationId"]])
            self._paths.setdefault(_segments(template), {})[method] = route

    def _route(self, method, template, op, handler):
        route = _Route()
        route.method, route.template, route.handler = method, template, handler
        route.operation_id = op["operationId"]
        base = "/paths/%s" % _escape(template)
        specs = [(self._deref(p), "%s/parameters/%d" % (base, i))
                 for i, p in enumerate(self._document["paths"][template].get("parameters", []))]
        specs += [(self._deref(p), "%s/%s/parameters/%d" % (base, method.lower(), i))
                  for i, p in enumerate(op.get("parameters", []))]
        route.parameters = {}
        for spec, pointer in specs:
            if "$ref" in _raw(self._document, pointer):
                pointer = _raw(self._document, pointer)["$ref"][1:]
            route.parameters[(spec["in"], spec["name"])] = _Parameter(
                spec, self.validator(pointer + "/schema"))
        body = self._deref(op.get("requestBody")) if op.get("requestBody") else None
        route.body = route.body_label = None
        route.body_required = bool(body and body.get("required"))
        if body is not None:
            pointer = "%s/%s/requestBody/content/application~1json/schema" % (base, method.lower())
            route.body = self.validator(pointer)
            schema = body["content"]["application/json"]["schema"]  # a title beside a $ref wins
            route.body_label = (schema.get("title") or self._deref(schema).get("title")
                                or "%s %s body" % (method, template))
        return route

    def validator(self, pointer):
        """A validator for the schema at JSON pointer `pointer` of the
        document (tests check responses with it)."""
        return Draft202012Validator({"$ref": "%s#%s" % (_URI, pointer)}, registry=self._registry)

    def find(self, method, target):
        """(template, operationId) of the route serving `method target`, or
        None; checks nothing else."""
        parts = [unquote(p) for p in target.partition("?")[0].split("/") if p]
        match = self._match(parts) if parts[:1] == ["v1"] else None
        route = match and match[0].get(method)
        return (route.template, route.operation_id) if route else None

    def _deref(self, node):
        while isinstance(node, dict) and "$ref" in node:
            node = _raw(self._document, node["$ref"][1:])
        return node

    def routes(self):
        """(METHOD, template, operationId) of every route."""
        return sorted((r.method, r.template, r.operation_id)
                      for methods in self._paths.values() for r in methods.values())

    def route(self, method, target, body):
        """'GET', '/v1/endpoints/a:eth0?x=1', body -> (handler, Request)."""
        path, _, query_string = target.partition("?")
        parts = [unquote(p) for p in path.split("/") if p]
        if parts[:1] != ["v1"]:
            raise RouteNotFound("no such API path '%s' (the API lives under /v1)" % path)
        match = self._match(parts)
        if match is None:
            raise RouteNotFound("no route for %s %s" % (method, path))
        methods, params = match
        route = methods.get(method)
        if route is None:
            allowed = sorted(methods)
            raise MethodNotAllowed("method %s is not allowed on %s: use %s" % (
                method, next(iter(methods.values())).template, ", ".join(allowed)),
                allow=allowed)
        query = dict(parse_qsl(query_string))
        for (where, name), param in route.parameters.items():
            value = (params if where == "path" else query).get(name)
            if value is None:
                if param.required:
                    raise BadRequest("%s is missing" % param.label)
                continue
            param.check(value)
        if route.body is not None:
            if body is None:
                if route.body_required:
                    raise BadRequest("%s: a JSON body is required" % route.body_label)
            else:
                error = first_error(route.body, body)
                if error is not None:
                    raise BadRequest(body_message(route.body_label, error))
        return route.handler, Request(method, path, params, query, body)

    def _match(self, parts):
        """The methods of the template that fits `parts` best (most literal
        segments), and its path parameters."""
        best = None
        for segments, methods in self._paths.items():
            if len(segments) != len(parts):
                continue
            params = {}
            for want, got in zip(segments, parts, strict=True):
                if want.startswith("{"):
                    params[want[1:-1]] = got
                elif want != got:
                    break
            else:
                literal = len(segments) - len(params)
                if best is None or literal > best[0]:
                    best = (literal, methods, params)
        return best and best[1:]


def _segments(template):
    return tuple(p for p in template.split("/") if p)


def _escape(token):
    """A JSON pointer token."""
    return token.replace("~", "~0").replace("/", "~1")


def _raw(document, pointer):
    node = document
    for token in pointer.split("/")[1:]:
        token = token.replace("~1", "/").replace("~0", "~")
        node = node[int(token)] if isinstance(node, list) else node[token]
    return node
