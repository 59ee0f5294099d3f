"""The agent's connection to the Kubernetes API server, on lightkube.

lightkube reads the configuration (a kubeconfig file, or the pod's service
account when the DaemonSet runs the agent: its token file is re-read when
the server answers 401, so rotated tokens keep working), and builds the
HTTP client with the cluster's CA, client certificates or token. Lists and
watches are spoken here over that client rather than through lightkube's
`Client.watch`, which can ask for no bookmarks and, on 410 Gone, watches
again from "now" without a re-list, losing the deletes that happened while
away (docs/kubernetes.md). Objects are the API's JSON as dicts.

Errors: `Unreachable` (no answer: refused, reset, timed out),
`ApiStatus` (the server answered with a failure Status), `Gone` (410: the
resourceVersion is too old, list again).
"""

import json
import socket

import httpx2 as httpx
from lightkube import KubeConfig
from lightkube.config import client_adapter

from agent.k8s.resources import Resource


class K8sError(Exception):
    """Base of the errors of the API connection."""


class Unreachable(K8sError):
    """The API server did not answer (refused, reset, timed out, cut)."""


class ApiStatus(K8sError):
    def __init__(self, code, reason, message):
        super().__init__("API server answered %s %s: %s" % (code, reason, message))
        self.code = code
        self.reason = reason


class Gone(ApiStatus):
    """410: the resourceVersion asked for is older than the server keeps."""


def _status_error(code, status):
    status = status if isinstance(status, dict) else {}
    cls = Gone if code == 410 else ApiStatus
    return cls(code, status.get("reason") or "", status.get("message") or "(no message)")


def load_config(kubeconfig=None, context=None):
    """lightkube's SingleConfig: the file if given, else in-cluster or ~/.kube/config."""
    try:
        config = KubeConfig.from_file(kubeconfig) if kubeconfig else KubeConfig.from_env()
        single = config.get(context)
    except Exception as exc:  # lightkube raises ConfigError, OSError, yaml errors
        raise K8sError("kubeconfig %r: %s" % (kubeconfig or "(in-cluster or default)", exc)) \
            from exc
    if single is None:
        raise K8sError("kubeconfig %r: no context %r" % (kubeconfig, context))
    return single


class Connection:
    """One HTTP client to the API server, shared by every informer."""

    def __init__(self, kubeconfig=None, context=None, timeout=10.0):
        single = load_config(kubeconfig, context)
        self.server = single.cluster.server
        self._http = client_adapter.Client(single, client_adapter.ConnectionParams(
            timeout=httpx.Timeout(timeout), trust_env=False))

    def close(self):
        self._http.close()

    def list(self, resource: Resource, limit=500):
        """(resourceVersion, [objects]) of the whole collection, paged by
        `limit`; each item gets the kind and apiVersion the list leaves out."""
        items, params = [], {"limit": str(limit)}
        while True:
            body = self._get_json(resource.path(), params)
            for obj in body.get("items") or []:
                obj.setdefault("kind", resource.kind)
                obj.setdefault("apiVersion", resource.api_version)
                items.append(obj)
            meta = body.get("metadata") or {}
            if not meta.get("continue"):
                return meta.get("resourceVersion"), items
            params = {"limit": str(limit), "continue": meta["continue"]}

    def _get_json(self, path, params):
        try:
            resp = self._http.get(path, params=params)
        except httpx.TransportError as exc:
            raise Unreachable("GET %s: %s" % (path, exc or type(exc).__name__)) from exc
        if resp.status_code != 200:
            raise _status_error(resp.status_code, _json_or_none(resp.content))
        try:
            return resp.json()
        except ValueError as exc:
            raise K8sError("GET %s: the answer is not JSON: %s" % (path, exc)) from exc

    def watch(self, resource: Resource, resource_version, timeout_seconds):
        """A `Watch` from resource_version, with bookmarks; the server ends
        it after timeout_seconds, and a silent connection is given up
        `READ_MARGIN` seconds after that."""
        return Watch(self._http, resource, resource_version, timeout_seconds)


READ_MARGIN = 30.0


def _json_or_none(data):
    try:
        return json.loads(data)
    except ValueError:
        return None


class Watch:
    """One watch request: iterate for (type, object) events; `cancel()`
    from another thread ends a blocked read at once."""

    def __init__(self, http, resource, resource_version, timeout_seconds):
        self._http = http
        self._resource = resource
        self._params = {"watch": "1", "resourceVersion": str(resource_version),
                        "allowWatchBookmarks": "true",
                        "timeoutSeconds": str(int(timeout_seconds))}
        self._timeout = httpx.Timeout(10.0, read=timeout_seconds + READ_MARGIN)
        self._response = None
        self._cancelled = False

    def __iter__(self):
        path = self._resource.path()
        request = self._http.build_request("GET", path, params=self._params,
                                           timeout=self._timeout)
        try:
            self._response = self._http.send(request, stream=True)
            try:
                if self._cancelled:  # cancel() came before the response existed
                    return
                if self._response.status_code != 200:
                    self._response.read()
                    raise _status_error(self._response.status_code,
                                        _json_or_none(self._response.content))
                for line in self._response.iter_lines():
                    if not line.strip():
                        continue
                    event = _json_or_none(line)
                    if not isinstance(event, dict) or not isinstance(event.get("object"), dict):
                        raise K8sError("watch %s: not a watch event: %r" % (path, line[:200]))
                    if event.get("type") == "ERROR":
                        status = event["object"]
                        raise _status_error(status.get("code") or 500, status)
                    yield event["type"], event["object"]
            finally:
                self._response.close()
        except httpx.TransportError as exc:
            if self._cancelled:
                return
            raise Unreachable("watch %s: %s" % (path, exc or type(exc).__name__)) from exc

    def cancel(self):
        """Ends the watch: shuts its socket down (a blocked read returns)."""
        self._cancelled = True
        response = self._response
        if response is None:
            return
        stream = response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
