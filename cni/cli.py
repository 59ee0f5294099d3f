"""The operator's command line (`cilium-cni` without CNI_COMMAND).

Commands that talk to the agent take `--socket PATH` and `-o json`; errors
print one line naming what was wrong and exit non-zero, never a traceback.
The plugin path never imports this module (click costs ~30 ms).
"""

import json
import os
import sys

import click

from cni import __version__ as VERSION
from cni import version as cni_version
from cni.client import DEFAULT_SOCKET, AgentClient
from cni.errors import CniError

DEFAULT_BIN_DIRS = ("/opt/cni/bin", "/usr/lib/cni")

socket_option = click.option("--socket", "socket_path", default=DEFAULT_SOCKET, show_default=True,
                             envvar="CILIUM_CNI_SOCKET", help="The agent's API socket.")
output_option = click.option("-o", "--output", type=click.Choice(["table", "json"]),
                             default="table", show_default=True)
# long operations: progress on stderr (cni/progress.py), on a terminal or with --progress
progress_option = click.option(
    "--progress", "show_progress", is_flag=True,
    help="Show progress on stderr even when it is not a terminal (never on stdout).")


def _agent(socket_path, method, url, body=None, ok=(200, 201), timeout=30.0):
    try:
        return AgentClient(socket_path, timeout=timeout).call(method, url, body, ok=ok)[1]
    except CniError as exc:
        raise click.ClickException(exc.msg) from None


def _table(rows, headers):
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=True)]
    for row in [headers] + rows:
        click.echo("  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)).rstrip())


def read_files(paths):
    """[{"source", "text"}] for each file, and each .yaml/.yml/.json file of
    each directory (sorted): what `policy import` and `service import` send."""
    files = []
    for path in paths:
        if os.path.isdir(path):
            names = sorted(n for n in os.listdir(path) if n.endswith((".yaml", ".yml", ".json")))
            if not names:
                raise click.ClickException("no .yaml, .yml or .json files in '%s'" % path)
            files += [os.path.join(path, n) for n in names]
        else:
            files.append(path)
    out = []
    for f in files:
        try:
            with open(f, encoding="utf-8") as fh:
                out.append({"source": os.path.abspath(f), "text": fh.read()})
        except (OSError, UnicodeDecodeError) as exc:
            raise click.ClickException("cannot read '%s': %s" % (f, getattr(exc, "strerror", None)
                                                                  or exc)) from None
    return out


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli():
    """cilium-cni: identity-aware eBPF datapath chained after another CNI plugin.

    With CNI_COMMAND set, the same executable is the CNI plugin.
    """


@cli.group()
def bpf():
    """What the datapath holds."""


@cli.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="Agent config YAML (defaults: see conf/agent.yaml).")
@click.option("--socket", "socket_path", default=None, help="API socket path.")
@click.option("--state-dir", default=None, help="Where the endpoint store lives.")
@click.option("--bpf-root", default=None, help="bpffs directory for pinned programs and maps.")
@click.option("--log-file", default=None, help="Agent log file ('' logs to stderr).")
@click.option("--log-level", default=None, type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--log-format", default=None, type=click.Choice(["text", "json"]))
@click.option("--metrics-address", default=None,
              help="Prometheus metrics IP:PORT (default 127.0.0.1:9962; '' disables).")
@click.option("--socket-lb/--no-socket-lb", "socket_lb", default=None,
              help="Services in connect()/sendmsg(): cgroup hooks on the cgroup-root (default on).")
def agent(config_file, socket_path, state_dir, bpf_root, log_file, log_level, log_format,
          metrics_address, socket_lb):
    """Run the node agent (root): API, endpoints, eBPF datapath."""
    from agent import config as agent_config
    from agent.main import AgentInUse, MetricsUnavailable, run
    try:
        config = agent_config.load(config_file, {
            "socket": socket_path, "state-dir": state_dir, "bpf-root": bpf_root,
            "log-file": log_file, "log-level": log_level, "log-format": log_format,
            "metrics-address": metrics_address, "socket-lb": socket_lb})
    except agent_config.ConfigError as exc:
        raise click.ClickException("invalid agent config: %s" % exc) from None
    from datapath.loader import DatapathError
    try:
        sys.exit(run(config))
    except (AgentInUse, MetricsUnavailable) as exc:
        raise click.ClickException(str(exc)) from None
    except DatapathError as exc:
        raise click.ClickException("cannot start the datapath: %s" % exc) from None
    except PermissionError as exc:
        raise click.ClickException("permission denied: %s (the agent must run as root)"
                                   % exc) from None


@cli.command()
@click.option("--conf-dir", default="/etc/cni/net.d", show_default=True)
@click.option("--bin-dir", "bin_dirs", multiple=True, default=DEFAULT_BIN_DIRS, show_default=True)
@socket_option
@output_option
def check(conf_dir, bin_dirs, socket_path, output):
    """Check config, binaries, agent, bpffs, programs and every endpoint."""
    from cni.checks import run_all
    lines = run_all(conf_dir, list(bin_dirs), socket_path)
    failed = [ln for ln in lines if not ln.ok]
    if output == "json":
        click.echo(json.dumps({"ok": not failed, "checks": [ln.as_dict() for ln in lines]},
                              indent=2))
    else:
        _table([[ln.name, "ok" if ln.ok else "FAIL", ln.detail, ln.remedy] for ln in lines],
               ["CHECK", "RESULT", "DETAIL", "REMEDY"])
        click.echo("%d check(s), %d failed" % (len(lines), len(failed)))
    sys.exit(1 if failed else 0)


@cli.command("install-conf")
@click.option("--chaining-mode", required=True, help="How the prior plugin shapes the pod's network.")
@click.option("--target", "network", default=None, help="The network (conflist name) to join.")
@click.option("--conf-dir", default="/etc/cni/net.d", show_default=True)
@click.option("--agent-socket", default=DEFAULT_SOCKET, show_default=True)
@click.option("--log-file", default="/var/log/cilium-cni.log", show_default=True)
def install_conf(chaining_mode, network, conf_dir, agent_socket, log_file):
    """Insert cilium-cni into the node's existing conflist (atomic, with a backup)."""
    import chainers
    from cni.install_conf import InstallError, install
    if chaining_mode not in chainers.api.names():
        raise click.BadParameter("unknown chaining mode '%s': valid modes are %s"
                                 % (chaining_mode, ", ".join(chainers.api.names())),
                                 param_hint="--chaining-mode")
    entry = {"type": "cilium-cni", "chaining-mode": chaining_mode, "agent-socket": agent_socket,
             "log-file": log_file}
    try:
        path, backup, changed = install(conf_dir, entry, network)
    except InstallError as exc:
        raise click.ClickException(str(exc)) from None
    if not changed:
        click.echo("%s already chains cilium-cni (%s); nothing changed" % (path, chaining_mode))
    else:
        click.echo("cilium-cni (%s) added to %s; original kept as %s" % (chaining_mode, path, backup))


@cli.group()
def endpoint():
    """Endpoints (one per pod interface) known to the agent."""


def _ep_row(ep):
    stats = ep.get("stats", {})
    k8s = ep.get("k8s") or {}
    pod = "%s/%s" % (k8s.get("namespace", ""), k8s["podName"]) if k8s.get("podName") else "-"
    return [ep["id"], ep["key"][:24], pod, ep["host"]["ifname"],
            ",".join(ep["interface"]["addresses"]) or "-",
            stats.get("egress", {}).get("packets", 0), stats.get("ingress", {}).get("packets", 0)]


_EP_HEADERS = ["ID", "CONTAINER:IFNAME", "POD", "HOST-VETH", "ADDRESSES", "EGRESS-PKTS",
               "INGRESS-PKTS"]


@endpoint.command("list")
@socket_option
@output_option
def endpoint_list(socket_path, output):
    """List endpoints with their packet counters."""
    eps = _agent(socket_path, "GET", "/v1/endpoints")
    if output == "json":
        click.echo(json.dumps(eps, indent=2))
    else:
        _table([_ep_row(ep) for ep in eps], _EP_HEADERS)


def _resolve(socket_path, ref):
    """An endpoint by numeric id or by CONTAINERID:IFNAME."""
    if ref.isdigit():
        for ep in _agent(socket_path, "GET", "/v1/endpoints"):
            if ep["id"] == int(ref):
                return ep
        raise click.ClickException("no endpoint with id %s" % ref)
    if ":" not in ref:
        raise click.ClickException("endpoint '%s': give an id or CONTAINERID:IFNAME" % ref)
    return _agent(socket_path, "GET", "/v1/endpoints/%s" % ref)


@endpoint.command("get")
@click.argument("ref")
@socket_option
@output_option
def endpoint_get(ref, socket_path, output):
    """Show one endpoint (by id or CONTAINERID:IFNAME)."""
    ep = _resolve(socket_path, ref)
    if output == "json":
        click.echo(json.dumps(ep, indent=2))
        return
    for key in ("id", "key", "network", "chainingMode", "netns"):
        click.echo("%-14s %s" % (key + ":", ep[key]))
    click.echo("%-14s %s" % ("pod:", _ep_row(ep)[2]))
    click.echo("%-14s %s (ifindex %d, %s)" % ("interface:", ep["interface"]["ifname"],
               ep["interface"]["ifindex"], ", ".join(ep["interface"]["addresses"])))
    click.echo("%-14s %s (ifindex %d)" % ("host veth:", ep["host"]["ifname"],
                                         ep["host"]["ifindex"]))
    for direction in ("egress", "ingress"):
        s = ep.get("stats", {}).get(direction, {})
        click.echo("%-14s %d packets, %d bytes" % (direction + ":", s.get("packets", 0),
                                                   s.get("bytes", 0)))


@endpoint.command("delete")
@click.argument("ref")
@socket_option
def endpoint_delete(ref, socket_path):
    """Delete an endpoint whose pod is gone (detaches its programs)."""
    ep = _resolve(socket_path, ref)
    _agent(socket_path, "DELETE", "/v1/endpoints/%s" % ep["key"])
    click.echo("deleted endpoint %d (%s)" % (ep["id"], ep["key"]))


@endpoint.command("labels")
@click.argument("ref")
@click.option("--add", "add", multiple=True, metavar="KEY=VALUE", help="Add or change a label.")
@click.option("--delete", "delete", multiple=True, metavar="KEY", help="Remove a label.")
@socket_option
@output_option
def endpoint_labels(ref, add, delete, socket_path, output):
    """Show or change an endpoint's labels; its identity follows at once."""
    ep = _resolve(socket_path, ref)
    if add or delete:
        ep = _agent(socket_path, "PUT", "/v1/endpoints/%s/labels" % ep["key"],
                    {"add": list(add), "delete": list(delete)})
    if output == "json":
        click.echo(json.dumps({"id": ep["id"], "identity": ep.get("identity"),
                               "labels": ep.get("labels", [])}, indent=2))
        return
    click.echo("endpoint %d identity %s" % (ep["id"], ep.get("identity")))
    for label in ep.get("labels", []):
        click.echo("  %s" % label)


@cli.command()
@output_option
def version(output):
    """Print the version and the CNI spec versions supported."""
    if output == "json":
        click.echo(json.dumps({"version": VERSION, "cniVersions": list(cni_version.SUPPORTED)},
                              indent=2))
        return
    click.echo("cilium-cni %s (CNI %s)" % (VERSION, ", ".join(cni_version.SUPPORTED)))


# The policy, identity, bpf, monitor and install commands live in their own modules.
import cni.cli_install  # noqa: E402,F401
import cni.cli_observe  # noqa: E402,F401  (status)
import cni.cli_policy  # noqa: E402,F401
import cni.cli_service  # noqa: E402,F401  (service, bpf lb)
