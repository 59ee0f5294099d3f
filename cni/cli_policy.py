"""CLI commands for identities, policy, the datapath's view, and the monitor.

Each talks to the agent's API; policy files are read here and parsed by
the agent, so that one parser reports errors (file, line, reason).
"""

import json
import os
import socket
import sys
import time

import click

from cni.cli import _agent, _resolve, _table, bpf, cli, output_option, progress_option, read_files, socket_option
from cni.progress import Progress, new_operation_id, operation_poller, run_with_progress, wanted


@cli.group()
def identity():
    """Security identities (label set -> number)."""


@identity.command("list")
@click.option("--endpoints", "with_endpoints", is_flag=True, help="Show the endpoints using each.")
@socket_option
@output_option
def identity_list(with_endpoints, socket_path, output):
    """List identities, reserved ones included."""
    rows = _agent(socket_path, "GET", "/v1/identities")
    if output == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    headers = ["ID", "LABELS", "REFS"] + (["ENDPOINTS"] if with_endpoints else [])
    table = []
    for r in rows:
        row = [r["id"], r["labels"], "-" if r["references"] is None else r["references"]]
        if with_endpoints:
            row.append(",".join(str(e) for e in r.get("endpoints", [])) or "-")
        table.append(row)
    _table(table, headers)


@cli.group()
def policy():
    """CiliumNetworkPolicy rules."""


@policy.command("import")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@progress_option
@socket_option
@output_option
def policy_import(paths, show_progress, socket_path, output):
    """Import policy files or directories (all or nothing)."""
    files = read_files(paths)
    started = time.monotonic()
    op = new_operation_id()
    progress = Progress("policy import", wanted(show_progress, output))
    # the agent may take a while for thousands of rules (it waits up to 300 s)
    out = run_with_progress(
        lambda: _agent(socket_path, "POST", "/v1/policy?operation=" + op, {"files": files},
                       timeout=330.0),
        operation_poller(socket_path, op), progress)
    seconds = time.monotonic() - started
    if output == "json":
        click.echo(json.dumps(dict(out, files=len(files), seconds=round(seconds, 3)), indent=2))
        return
    click.echo("imported %d rule(s) from %d file(s) in %.2f s; policy revision %d" % (
        out["rules"], len(files), seconds, out["revision"]))


@policy.command("get")
@socket_option
@output_option
def policy_get(socket_path, output):
    """List the rules in force."""
    out = _agent(socket_path, "GET", "/v1/policy")
    if output == "json":
        click.echo(json.dumps(out, indent=2))
        return
    _table([[r["name"], r.get("namespace") or "-", r["source"]] for r in out["rules"]],
           ["NAME", "NAMESPACE", "SOURCE"])
    click.echo("revision %d, %d rule(s)" % (out["revision"], len(out["rules"])))


@policy.command("delete")
@click.argument("name", required=False)
@click.option("--namespace", default=None)
@click.option("--source", default=None, help="Every rule imported from this file.")
@click.option("--all", "everything", is_flag=True)
@socket_option
@output_option
def policy_delete(name, namespace, source, everything, socket_path, output):
    """Delete rules by name, by source file, or all of them."""
    if sum(bool(x) for x in (name, source, everything)) != 1:
        raise click.UsageError("give exactly one of NAME, --source or --all")
    query = {"all": "1"} if everything else {"source": os.path.abspath(source)} if source \
        else {"name": name, **({"namespace": namespace} if namespace else {})}
    from urllib.parse import urlencode
    out = _agent(socket_path, "DELETE", "/v1/policy?" + urlencode(query))
    if output == "json":
        click.echo(json.dumps(out, indent=2))
        return
    click.echo("deleted %d rule(s); policy revision %d" % (out["deleted"], out["revision"]))


@policy.command("selectors")
@socket_option
@output_option
def policy_selectors(socket_path, output):
    """The selector cache: each selector, its identities and its users."""
    rows = _agent(socket_path, "GET", "/v1/policy/selectors")
    if output == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    _table([[r["selector"], ",".join(map(str, r["identities"])) or "-", ", ".join(r["users"])]
            for r in rows],
           ["SELECTOR", "IDENTITIES", "USERS"])


@bpf.group("policy")
def bpf_policy():
    """Per-endpoint policy map entries."""


@bpf_policy.command("get")
@click.argument("ref")
@socket_option
@output_option
def bpf_policy_get(ref, socket_path, output):
    """Dump the policy entries the datapath holds for an endpoint."""
    ep = _resolve(socket_path, ref)
    out = _agent(socket_path, "GET", "/v1/endpoints/%s/bpf-policy" % ep["key"])
    if output == "json":
        click.echo(json.dumps(out, indent=2))
        return
    click.echo("endpoint %d identity %s enforced ingress=%s egress=%s" % (
        ep["id"], out["identity"], out["enforced"]["ingress"], out["enforced"]["egress"]))
    _table([[e["direction"], "deny" if e["deny"] else "allow", e["identity"] or "any",
             e["proto"] or "any", e["ports"], e["packets"]] for e in out["entries"]],
           ["DIRECTION", "ACTION", "IDENTITY", "PROTO", "PORTS", "PACKETS"])


def _stream(socket_path, url):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(socket_path)
    except OSError as exc:
        raise click.ClickException("cilium-cni agent is not reachable at '%s': %s; start it with "
                                   "'cilium-cni agent --socket %s'" % (socket_path, exc.strerror,
                                                                       socket_path)) from None
    sock.sendall(b"GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n" % url.encode())
    reader = sock.makefile("rb")
    status = reader.readline().split()
    while reader.readline() not in (b"\r\n", b"\n", b""):
        pass
    if len(status) < 2 or status[1] != b"200":
        body = reader.read().decode(errors="replace")
        raise click.ClickException("agent refused the monitor: %s" % body.strip())
    return sock, reader


@cli.command()
@click.option("--type", "kind", type=click.Choice(["drop", "all", "lb"]), default="all", show_default=True,
              help="lb: service translations (the datapath reports them only while asked).")
@socket_option
@output_option
def monitor(kind, socket_path, output):
    """Print datapath events (drops) live until interrupted."""
    sock, reader = _stream(socket_path, "/v1/monitor?type=%s" % kind)
    click.echo("listening for %s events (Ctrl-C to stop)" % kind, err=True)
    try:
        for line in reader:
            if not line.strip():
                continue
            event = json.loads(line)
            if output == "json":
                click.echo(json.dumps(event))
            else:
                click.echo(format_event(event))
            sys.stdout.flush()
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()


def _endpoint_text(addr, port):
    if not port:
        return str(addr)
    return "[%s]:%s" % (addr, port) if ":" in str(addr) else "%s:%s" % (addr, port)


def format_event(e):
    """One line per event: time, kind and reason, endpoint, identities, flow."""
    stamp = e.get("time")
    if isinstance(stamp, (int, float)):
        text = time.strftime("%H:%M:%S", time.localtime(stamp)) + ".%03d" % (int(stamp * 1000) % 1000)
    else:
        text = e.get("timeText", "-")
    if e.get("type") == "lb" and e.get("path") == "socket":
        return "%s LB socket pid %s service %s: %s translated to %s %s" % (
            text, e.get("pid"), e.get("serviceID"), _endpoint_text(e.get("frontend"), e.get("frontendPort")),
            _endpoint_text(e.get("backend"), e.get("backendPort")), e.get("proto"))
    if e.get("type") == "lb":
        return "%s LB ep %s service %s: %s -> %s translated to %s %s" % (
            text, e.get("epID"), e.get("serviceID"), _endpoint_text(e.get("src"), e.get("sport")),
            _endpoint_text(e.get("frontend"), e.get("frontendPort")),
            _endpoint_text(e.get("backend"), e.get("backendPort")), e.get("proto"))
    return "%s %s (%s) ep %s %s: identity %s -> %s  %s -> %s %s" % (
        text, e.get("type", "drop").upper(), e.get("reason"), e.get("epID"), e.get("direction"),
        e.get("srcIdentity"), e.get("dstIdentity"), _endpoint_text(e.get("src"), e.get("sport")),
        _endpoint_text(e.get("dst"), e.get("dport")), e.get("proto"))
