"""CLI for services (`service update|list|delete|import`) and `bpf lb list`.

Kubernetes YAML is read here and parsed by the agent, in one request for
the whole import (applied as one batch).
"""

import json
import time
from urllib.parse import urlencode

import click

from cli.common import call_agent, output_option, print_table, read_files, socket_option


@click.group()
def service():
    """Services: frontends balanced over backends."""


def _print_services(services, output):
    if output == "json":
        click.echo(json.dumps(services, indent=2))
        return
    rows = []
    for s in services:
        backends = ",".join("%s:%d%s" % ("[%s]" % b["address"] if ":" in b["address"] else b["address"],
                                         b["port"], "" if b["weight"] == 1 else "@%d" % b["weight"])
                            for b in s["backends"])
        rows.append([s["id"], s["key"], s["type"], s.get("name") or "-", backends or "(none: refused)"])
    print_table(rows, ["ID", "FRONTEND", "TYPE", "NAME", "BACKENDS"])


@service.command("update")
@click.option("--frontend", required=True, metavar="IP:PORT[/tcp|/udp]")
@click.option("--backends", required=True, metavar="IP:PORT[@WEIGHT],...",
              help="Comma-separated; '' makes a service that refuses connections.")
@click.option("--type", "kind", type=click.Choice(["ClusterIP", "NodePort", "HostPort"]),
              default="ClusterIP", show_default=True)
@click.option("--name", default=None, metavar="NS/NAME")
@socket_option
@output_option
def service_update(frontend, backends, kind, name, socket_path, output):
    """Create or replace one service."""
    body = {"services": [{"frontend": frontend, "backends": backends, "type": kind, "name": name}]}
    out = call_agent(socket_path, "PUT", "/v1/services", body)["services"]
    if output == "json":
        click.echo(json.dumps(out[0], indent=2))
    else:
        click.echo("service %s (id %d): %d backend(s)" % (out[0]["key"], out[0]["id"],
                                                         len(out[0]["backends"])))


@service.command("list")
@socket_option
@output_option
def service_list(socket_path, output):
    """List services."""
    _print_services(call_agent(socket_path, "GET", "/v1/services"), output)


@service.command("delete")
@click.option("--frontend", default=None, metavar="IP:PORT[/tcp|/udp]")
@click.option("--name", default=None, metavar="NS/NAME", help="Every frontend of this service.")
@click.option("--all", "everything", is_flag=True)
@socket_option
def service_delete(frontend, name, everything, socket_path):
    """Delete a service by frontend, by name, or all."""
    if sum(bool(x) for x in (frontend, name, everything)) != 1:
        raise click.UsageError("give exactly one of --frontend, --name or --all")
    query = {"all": "1"} if everything else {"frontend": frontend} if frontend else {"name": name}
    out = call_agent(socket_path, "DELETE", "/v1/services?" + urlencode(query))
    click.echo("deleted %d service(s)" % len(out["deleted"]))


@service.command("import")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@socket_option
def service_import(paths, socket_path):
    """Import Kubernetes Service + EndpointSlice/Endpoints YAML (one batch)."""
    files = read_files(paths)
    started = time.monotonic()
    out = call_agent(socket_path, "POST", "/v1/services/import", {"files": files}, timeout=330.0)
    click.echo("imported %d frontend(s) of %d service(s) from %d file(s) in %.2f s" % (
        out["services"], out["names"], len(files), time.monotonic() - started))


@click.group("lb")
def bpf_lb():
    """The datapath's service maps."""


@bpf_lb.command("list")
@socket_option
@output_option
def bpf_lb_list(socket_path, output):
    """Services as the pinned maps hold them (backend slots in order)."""
    rows = call_agent(socket_path, "GET", "/v1/services/bpf")
    if output == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    print_table([[r["frontend"], r["id"], r["type"], ",".join(r["backends"]) or "(none: refused)"]
                 for r in rows], ["FRONTEND", "ID", "TYPE", "BACKEND SLOTS"])
