"""conf/kubernetes/*.yaml checked without a cluster, as `kubectl apply
--dry-run=client` would: every object against the Kubernetes OpenAPI-derived
JSON schemas that the kubernetes-validate package ships (strict: unknown
fields are errors), for the oldest and newest minor versions it has; then
what a CNI agent's DaemonSet needs, the RBAC wiring, the ConfigMap's agent
config through the agent's own loader, and both containers' command lines
through the real CLI parser."""

import glob
import os

import kubernetes_validate
import pytest
import yaml

from agent import config as agent_config
from tests import lab

pytestmark = pytest.mark.unit

MANIFESTS = sorted(glob.glob(os.path.join(lab.REPO, "conf", "kubernetes", "*.yaml")))
SCHEMA_DIR = os.path.join(os.path.dirname(kubernetes_validate.__file__), "kubernetes-json-schema")
VERSIONS = sorted({d.split("-")[0][1:] for d in os.listdir(SCHEMA_DIR)},
                  key=lambda v: tuple(map(int, v.split("."))))


def objects():
    out = []
    for path in MANIFESTS:
        with open(path) as f:
            out += [(os.path.basename(path), doc) for doc in yaml.safe_load_all(f) if doc]
    return out


def by_kind(kind):
    (obj,) = [doc for _, doc in objects() if doc["kind"] == kind]
    return obj


@pytest.mark.parametrize("version", [VERSIONS[0], VERSIONS[-1]])
def test_every_object_passes_the_kubernetes_schema(version):
    kinds = []
    for name, doc in objects():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail("%s: %s %s: %s at %s" % (name, doc["kind"], doc["metadata"]["name"],
                                                  exc.message, list(exc.path)))
        kinds.append(doc["kind"])
    assert sorted(kinds) == ["ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet",
                             "ServiceAccount"]


def test_the_schema_check_catches_mistakes():
    ds = by_kind("DaemonSet")
    bad = yaml.safe_load(yaml.safe_dump(ds))
    bad["spec"]["template"]["spec"]["hostNetwork"] = "yes"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, VERSIONS[-1], strict=True)
    bad = yaml.safe_load(yaml.safe_dump(ds))
    bad["spec"]["template"]["spec"]["containers"][0]["volumeMount"] = []  # a typo
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, VERSIONS[-1], strict=True)


def test_daemonset_has_the_host_access_a_cni_agent_needs():
    ds = by_kind("DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    assert ds["spec"]["selector"]["matchLabels"].items() <= \
        ds["spec"]["template"]["metadata"]["labels"].items()
    assert pod["hostNetwork"] is True
    assert {"operator": "Exists"} in pod["tolerations"]
    host = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert {"/opt/cni/bin", "/etc/cni/net.d", "/sys/fs/bpf", "/sys/fs/cgroup",
            "/var/run/cilium-cni", "/lib/modules"} <= set(host.values())
    (agent,) = pod["containers"]
    (init,) = pod["initContainers"]
    for c in (agent, init):
        assert c["securityContext"]["privileged"] is True
        for m in c["volumeMounts"]:
            assert m["name"] in {v["name"] for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in agent["volumeMounts"]}
    assert mounts["/sys/fs/bpf"]["mountPropagation"] == "Bidirectional"
    for path in ("/sys/fs/cgroup", "/var/run/cilium-cni", "/lib/modules"):
        assert host[mounts[path]["name"]] == path
    init_mounts = {m["mountPath"]: host.get(m["name"]) for m in init["volumeMounts"]}
    assert init_mounts["/host/opt/cni/bin"] == "/opt/cni/bin"
    assert init_mounts["/host/etc/cni/net.d"] == "/etc/cni/net.d"
    assert init_mounts["/host/etc/cilium-cni"] == "/etc/cilium-cni"


def test_rbac_binds_the_daemonsets_service_account():
    sa, role, binding = by_kind("ServiceAccount"), by_kind("ClusterRole"), \
        by_kind("ClusterRoleBinding")
    ds = by_kind("DaemonSet")
    assert ds["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]
    assert sa["metadata"]["namespace"] == ds["metadata"]["namespace"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": role["metadata"]["name"]}
    assert {"kind": "ServiceAccount", "name": sa["metadata"]["name"],
            "namespace": sa["metadata"]["namespace"]} in binding["subjects"]
    for rule in role["rules"]:  # read-only
        assert set(rule["verbs"]) <= {"get", "list", "watch"}


def test_configmap_agent_config_is_accepted_by_the_agent(tmp_path):
    cm = by_kind("ConfigMap")
    path = tmp_path / "agent.yaml"
    path.write_text(cm["data"]["agent.yaml"])
    config = agent_config.load(str(path))
    assert config.log_file == ""  # stderr, for kubectl logs
    assert config.bpf_root == "/sys/fs/bpf/cilium-cni"
    import chainers
    assert cm["data"]["chaining-mode"] in chainers.api.names()
    ds = by_kind("DaemonSet")
    for c in ds["spec"]["template"]["spec"]["containers"] + \
            ds["spec"]["template"]["spec"]["initContainers"]:
        for vol in c["volumeMounts"]:
            if vol["name"] == "config":
                assert vol["mountPath"] == "/etc/cilium-cni-config"
    assert {"name": "config", "configMap": {"name": cm["metadata"]["name"]}} in \
        ds["spec"]["template"]["spec"]["volumes"]


def test_container_commands_parse_with_the_real_cli():
    from cli.main import cli
    pod = by_kind("DaemonSet")["spec"]["template"]["spec"]
    env = {e["name"]: by_kind("ConfigMap")["data"][e["valueFrom"]["configMapKeyRef"]["key"]]
           for e in pod["initContainers"][0]["env"]}
    def expand(arg):  # what the kubelet does with $(VAR) in a command
        for name, value in env.items():
            arg = arg.replace("$(%s)" % name, value)
        return arg

    for c in pod["initContainers"] + pod["containers"]:
        argv = [expand(a) for a in c["command"]]
        assert argv[0] == "/opt/cilium-cni/cilium-cni"
        ctx = cli.make_context("cilium-cni", argv[1:], resilient_parsing=False)
        sub = cli.get_command(ctx, argv[1])
        sub.make_context(argv[1], argv[2:])  # raises on an unknown option or bad choice
    init = " ".join(pod["initContainers"][0]["command"])
    assert "install --no-agent" in init and "--root /host" in init, init


def test_rbac_grants_exactly_what_the_agent_reads():
    """list and watch of the resources agent/k8s/resources.py names, nothing else."""
    from agent.k8s import resources
    with open(os.path.join(lab.REPO, "conf", "kubernetes", "rbac.yaml")) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    role = [d for d in docs if d["kind"] == "ClusterRole"][0]
    granted = {(group, res, verb) for rule in role["rules"] for group in rule["apiGroups"]
               for res in rule["resources"] for verb in rule["verbs"]}
    wanted = {(r.group, r.plural, verb) for r in resources.ALL for verb in ("list", "watch")}
    assert granted == wanted
