"""`cilium-cni check`: the operator's first tool when a pod has no network.

Each check yields lines of (name, ok, detail, remedy). Checks run in the
order a pod's ADD depends on them: configuration (the conflists, and the
agent's config file when `--agent-config` names it), binaries, agent, its
kvstore (etcd, when clustered), bpffs, pinned programs, orphaned programs
(ours, attached, owned by no agent), then every endpoint's netns, veth and
programs. It only reads: it never repairs anything.
"""

import json
import os
import sys

import click

from cli.cluster import kvstore_health
from cli.common import output_option, print_table, socket_option
from cli.install_conf import mode_problem
from cli.observe import STATE_VOLUME_LOW, volume_summary
from cni import version
from cni.client import AgentClient, AgentUnreachable

PLUGIN_TYPE = "cilium-cni"
DEFAULT_BIN_DIRS = ("/opt/cni/bin", "/usr/lib/cni")
SCHEMA_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "conf", "netconf.schema.json")


class Line:
    __slots__ = ("name", "ok", "detail", "remedy")

    def __init__(self, name, ok, detail, remedy=""):
        self.name, self.ok, self.detail, self.remedy = name, ok, detail, remedy

    def as_dict(self):
        return {"check": self.name, "ok": self.ok, "detail": self.detail, "remedy": self.remedy}


def _load_schema_validator():
    import jsonschema
    with open(SCHEMA_PATH) as f:
        schema = json.load(f)
    return jsonschema.Draft202012Validator(schema)


def _conf_files(conf_dir):
    try:
        names = sorted(os.listdir(conf_dir))
    except OSError as exc:
        return None, exc.strerror
    return [os.path.join(conf_dir, n) for n in names
            if n.endswith((".conflist", ".conf", ".json"))], None


def check_conflists(conf_dir, bin_dirs):
    """Every conflist parses; each cilium-cni entry passes the schema."""
    import chainers  # here, like datapath below: only `check` needs them, not every command
    files, err = _conf_files(conf_dir)
    if files is None:
        yield Line("conflist dir", False, "cannot read %s: %s" % (conf_dir, err),
                   "create %s or pass --conf-dir" % conf_dir)
        return
    validator = _load_schema_validator()
    found = 0
    for path in files:
        name = "conflist %s" % os.path.basename(path)
        try:
            with open(path) as f:
                conf = json.load(f)
        except (OSError, ValueError) as exc:
            yield Line(name, False, "does not parse: %s" % exc, "fix the JSON in %s" % path)
            continue
        if not isinstance(conf, dict):
            yield Line(name, False, "is not a JSON object", "fix %s" % path)
            continue
        plugins = conf.get("plugins") if "plugins" in conf else [conf]
        if not isinstance(plugins, list) or not all(isinstance(p, dict) for p in plugins):
            yield Line(name, False, "'plugins' is not a list of objects", "fix %s" % path)
            continue
        ours = [p for p in plugins if p.get("type") == PLUGIN_TYPE]
        if not ours:
            continue
        found += 1
        try:
            cni_version = conf.get("cniVersion")
            if isinstance(conf.get("cniVersions"), list):
                cni_version = version.negotiate(conf["cniVersions"])
        except Exception as exc:
            yield Line(name, False, getattr(exc, "msg", str(exc)),
                       "list a supported version: %s" % ", ".join(version.SUPPORTED))
            continue
        problems = []
        for entry in ours:
            merged = dict(entry, cniVersion=cni_version, name=conf.get("name"))
            problems += ["%s: %s" % ("/".join(str(p) for p in e.absolute_path) or "entry",
                                     e.message) for e in validator.iter_errors(merged)]
            mode = entry.get("chaining-mode")
            if mode in chainers.api.names():
                misfit = mode_problem({"plugins": plugins}, mode)
                if misfit:
                    problems.append(misfit)
        if plugins[0].get("type") == PLUGIN_TYPE:
            problems.append("cilium-cni is first in the chain; it must follow the plugin "
                            "that creates the pod's interface")
        missing = [p.get("type") for p in plugins
                   if not any(os.access(os.path.join(d, str(p.get("type"))), os.X_OK)
                              for d in bin_dirs)]
        if problems:
            yield Line(name, False, "; ".join(problems),
                       "fix the cilium-cni entry (schema: %s)" % SCHEMA_PATH)
        else:
            yield Line(name, True, "cniVersion %s, chain %s" % (
                cni_version, " -> ".join(str(p.get("type")) for p in plugins)))
        if missing:
            yield Line("plugins of %s" % os.path.basename(path), False,
                       "not found in %s: %s" % (":".join(bin_dirs), ", ".join(map(str, missing))),
                       "install them into one of the CNI bin dirs")
    if not found:
        yield Line("conflists", False, "no conflist in %s uses cilium-cni" % conf_dir,
                   "add a cilium-cni entry after the prior plugin (examples in conf/)")


def check_binary(bin_dirs):
    for d in bin_dirs:
        path = os.path.join(d, PLUGIN_TYPE)
        if os.access(path, os.X_OK):
            yield Line("plugin binary", True, path)
            return
    yield Line("plugin binary", False, "cilium-cni not found in %s" % ":".join(bin_dirs),
               "install it: cp .venv/bin/cilium-cni /opt/cni/bin/ (or scripts/install)")


def check_agent_config(path):
    """([Line], the config or None): the agent's config file as the agent
    would read it (agent.config.load: unknown keys, types, limits)."""
    from agent import config as agent_config
    try:
        config = agent_config.load(path)
    except agent_config.ConfigError as exc:
        return [Line("agent config", False, str(exc),
                     "fix %s (every key and its limits: conf/agent.yaml)" % path)], None
    cluster = ("kvstore etcd at %s, prefix %s" % (",".join(config.kvstore_endpoints),
                                                   config.kvstore_prefix)
               if config.kvstore == "etcd" else "no kvstore (this node alone)")
    return [Line("agent config", True, "%s: valid; %s" % (path, cluster))], config


def check_kvstore(kv, config=None):
    """The agent's kvstore as /v1/status reports it, against the config
    file when one was read."""
    if config is not None and (config.kvstore == "etcd") != (kv is not None):
        want = "kvstore: etcd" if config.kvstore == "etcd" else "no kvstore"
        yield Line("kvstore", False, "the agent runs %s, yet its config says %s" % (
            "without a kvstore" if kv is None else "with etcd", want),
            "restart the agent with its config (cilium-cni agent --config ...)")
        return
    if kv is None:
        return
    ok, detail, remedy = kvstore_health(kv)
    yield Line("kvstore", ok, detail, remedy)
    if config is not None and config.kvstore_prefix.strip("/") + "/" != kv["prefix"]:
        yield Line("kvstore prefix", False, "the agent uses %s, its config says %s" % (
            kv["prefix"], config.kvstore_prefix), "restart the agent with its config")


def check_agent_and_datapath(socket_path, config=None):
    from datapath.bpffs import is_bpffs
    client = AgentClient(socket_path, timeout=10.0)
    try:
        _, status = client.call("GET", "/v1/status")
    except AgentUnreachable as exc:
        yield Line("agent", False, exc.msg, "start the agent: cilium-cni agent --socket %s"
                   % socket_path)
        return
    except Exception as exc:
        yield Line("agent", False, "agent at %s answered badly: %s" % (socket_path, exc),
                   "see the agent's log")
        return
    yield Line("agent", True, "version %s, pid %s, up %ss, %d endpoint(s)" % (
        status["version"], status["pid"], status["uptimeSeconds"], status["endpoints"]))
    if "kvstore" in status or config is not None:  # an older agent does not report it
        yield from check_kvstore(status.get("kvstore"), config)
    root = status["bpfRoot"]
    mount = os.path.dirname(root.rstrip("/")) or "/"
    if is_bpffs(mount) or is_bpffs(root):
        yield Line("bpffs", True, "%s is a bpf filesystem" % mount)
    else:
        yield Line("bpffs", False, "%s is not a bpf filesystem" % mount,
                   "mount it: mount -t bpf bpf /sys/fs/bpf")
    pins = [os.path.join(root, "progs", p) for p in ("from_container", "to_container")]
    missing = [p for p in pins if not os.path.exists(p)]
    if missing:
        yield Line("pinned programs", False, "missing: %s" % ", ".join(missing),
                   "restart the agent; it compiles and pins the programs at start")
    else:
        yield Line("pinned programs", True, ", ".join(pins))
    volume = status.get("stateVolume")
    if volume:  # an older agent does not report it
        ok = not volume.get("lastError") and volume["freeBytes"] >= STATE_VOLUME_LOW
        yield Line("state volume", ok, volume_summary(volume),
                   "" if ok else "free space on %s, or give the agent a larger --state-dir"
                   % os.path.dirname(volume["path"]))
    orphans = status.get("orphans", ())
    if orphans is None:
        yield Line("orphaned programs", False, "the agent could not look for them",
                   "see the agent's log")
    elif orphans:
        yield Line("orphaned programs", False, "%d attached, no agent owns them: %s" % (
            len(orphans), ", ".join("%s on %s" % (o["name"], o["where"]) for o in orphans)),
            "cilium-cni cleanup --orphans")
    elif "orphans" in status:  # an older agent does not count them
        yield Line("orphaned programs", True, "none")
    _, endpoints = client.call("GET", "/v1/endpoints")
    for ep in endpoints:
        _, report = client.call("POST", "/v1/endpoints/%s/check" % ep["key"], {})
        problems = report.get("problems", [])
        label = "endpoint %d %s" % (ep["id"], _pod_name(ep))
        if problems:
            yield Line(label, False, "; ".join(problems),
                       "recreate the pod, or delete the endpoint if the pod is gone: "
                       "cilium-cni endpoint delete %s" % ep["key"])
        else:
            yield Line(label, True, "%s: netns, veth %s and programs in place"
                       % (ep["key"], ep["host"]["ifname"]))


def _pod_name(ep):
    k8s = ep.get("k8s") or {}
    if k8s.get("podName"):
        return "%s/%s" % (k8s.get("namespace", "?"), k8s["podName"])
    return ep["containerID"][:12]


def run_all(conf_dir, bin_dirs, socket_path, agent_config=None):
    lines = list(check_conflists(conf_dir, bin_dirs))
    config = None
    if agent_config:
        found, config = check_agent_config(agent_config)
        lines += found
    lines += list(check_binary(bin_dirs))
    lines += list(check_agent_and_datapath(socket_path, config))
    return lines


@click.command()
@click.option("--conf-dir", default="/etc/cni/net.d", show_default=True)
@click.option("--bin-dir", "bin_dirs", multiple=True, default=DEFAULT_BIN_DIRS, show_default=True)
@click.option("--agent-config", type=click.Path(dir_okay=False), default=None,
              help="Also check this agent config file (e.g. /etc/cilium-cni/agent.yaml) and "
                   "that the running agent's kvstore matches it.")
@socket_option
@output_option
def check(conf_dir, bin_dirs, agent_config, socket_path, output):
    """Check config, binaries, agent, kvstore, bpffs, programs and every endpoint."""
    lines = run_all(conf_dir, list(bin_dirs), socket_path, agent_config)
    failed = [ln for ln in lines if not ln.ok]
    if output == "json":
        click.echo(json.dumps({"ok": not failed, "checks": [ln.as_dict() for ln in lines]},
                              indent=2))
    else:
        print_table([[ln.name, "ok" if ln.ok else "FAIL", ln.detail, ln.remedy] for ln in lines],
                    ["CHECK", "RESULT", "DETAIL", "REMEDY"])
        click.echo("%d check(s), %d failed" % (len(lines), len(failed)))
    sys.exit(1 if failed else 0)
