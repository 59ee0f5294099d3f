"""What the stand-in API server checks before it stores an object.

Core, discovery and networking objects are checked against the Kubernetes
JSON schemas that `kubernetes-validate` ships (strict: an unknown field is
an error, as `kubectl --validate=strict` makes it), with the validators
cached per kind: `kubernetes_validate.validate` loads the schema files on
every call (9 ms a pod), too slow for 10,000 pods. Cilium's custom
resources are checked against the OpenAPI v3 schema of the CRD manifests
in conf/kubernetes/crds/, with unknown fields refused wherever the schema
does not preserve them (the real server would prune them silently; a test
that sends one has made a mistake and should hear about it).
"""

import copy
import functools
import glob
import os
import re

import jsonschema
import kubernetes_validate
import referencing
import yaml
from kubernetes_validate import utils as kv_utils

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CRD_DIR = os.path.join(REPO, "conf", "kubernetes", "crds")
K8S_VERSION = kubernetes_validate.latest_version()
# a DNS-1123 subdomain: every object's name here (pods, policies, services, slices)
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class Invalid(ValueError):
    """An object the API server refuses (HTTP 422 Unprocessable Entity)."""


@functools.cache
def _builtin_validator(kind, api_version):
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    folder = "kubernetes-json-schema/v%s-local-strict" % K8S_VERSION
    schema = kv_utils.schema_contents("%s/%s-%s.json" % (folder, kind.lower(), group_version),
                                      K8S_VERSION)
    defs = kv_utils.schema_contents(folder + "/_definitions.json", K8S_VERSION)
    registry = referencing.Resource.from_contents(defs) @ (
        referencing.Resource.from_contents(schema) @ referencing.Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


def _closed(schema):
    """The CRD schema with unknown fields refused where it does not preserve them."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if not isinstance(node, dict):
            return
        if node.get("type") == "object" and "properties" in node \
                and not node.get("x-kubernetes-preserve-unknown-fields") \
                and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for key in ("properties",):
            for child in (node.get(key) or {}).values():
                walk(child)
        for key in ("items", "additionalProperties"):
            walk(node.get(key))
        for key in ("anyOf", "allOf", "oneOf"):
            for child in node.get(key) or []:
                walk(child)
    walk(schema)
    return schema


@functools.cache
def crds():
    """{(group/version, kind): (crd, validator)} from conf/kubernetes/crds/*.yaml."""
    out = {}
    for path in sorted(glob.glob(os.path.join(CRD_DIR, "*.yaml"))):
        with open(path) as f:
            crd = yaml.safe_load(f)
        spec = crd["spec"]
        for version in spec["versions"]:
            schema = _closed(version["schema"]["openAPIV3Schema"])
            key = ("%s/%s" % (spec["group"], version["name"]), spec["names"]["kind"])
            out[key] = (crd, jsonschema.Draft202012Validator(schema))
    return out


def validate(obj):
    """Raises Invalid naming the object and the field when `obj` is not one
    the API server would store."""
    if not isinstance(obj, dict) or not obj.get("apiVersion") or not obj.get("kind"):
        raise Invalid("an object needs apiVersion and kind")
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    what = "%s %s" % (obj["kind"], name)
    if not isinstance(name, str) or len(name) > 253 or not _NAME.match(name):
        raise Invalid("%s: metadata.name must be a DNS-1123 subdomain" % what)
    custom = crds().get((obj["apiVersion"], obj["kind"]))
    validator = custom[1] if custom else _builtin_validator(obj["kind"], obj["apiVersion"])
    error = jsonschema.exceptions.best_match(validator.iter_errors(obj))
    if error is not None:
        # an anyOf names every alternative, not the whole object
        message = " or ".join(e.message for e in error.context) if error.context \
            else error.message
        raise Invalid("%s: %s at %s" % (what, message,
                                        ".".join(str(p) for p in error.absolute_path) or "top"))
