"""`cilium-cni identity`, `policy` and `bpf policy`: identities, the rules,
and the policy entries the datapath holds for an endpoint.

Each talks to the agent's API; policy files are read here and parsed by
the agent, so that one parser reports errors (file, line, reason).
"""

import json
import os
import time

import click

from cli.common import (
    call_agent,
    output_option,
    print_table,
    progress_option,
    read_files,
    resolve_endpoint,
    socket_option,
)
from cli.progress import Progress, new_operation_id, operation_poller, run_with_progress, wanted


@click.group()
def identity():
    """Security identities (label set -> number)."""


@identity.command("list")
@click.option("--endpoints", "with_endpoints", is_flag=True, help="Show the endpoints using each.")
@socket_option
@output_option
def identity_list(with_endpoints, socket_path, output):
    """List identities, reserved ones included."""
    rows = call_agent(socket_path, "GET", "/v1/identities")
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
    print_table(table, headers)


@click.group()
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
        lambda: call_agent(socket_path, "POST", "/v1/policy?operation=" + op, {"files": files},
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
    out = call_agent(socket_path, "GET", "/v1/policy")
    if output == "json":
        click.echo(json.dumps(out, indent=2))
        return
    print_table([[r["name"], r.get("namespace") or "-", r["source"]] for r in out["rules"]],
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
    out = call_agent(socket_path, "DELETE", "/v1/policy?" + urlencode(query))
    if output == "json":
        click.echo(json.dumps(out, indent=2))
        return
    click.echo("deleted %d rule(s); policy revision %d" % (out["deleted"], out["revision"]))


@policy.command("selectors")
@socket_option
@output_option
def policy_selectors(socket_path, output):
    """The selector cache: each selector, its identities and its users."""
    rows = call_agent(socket_path, "GET", "/v1/policy/selectors")
    if output == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    print_table([[r["selector"], ",".join(map(str, r["identities"])) or "-", ", ".join(r["users"])]
                 for r in rows],
                ["SELECTOR", "IDENTITIES", "USERS"])


@click.group("policy")
def bpf_policy():
    """Per-endpoint policy map entries."""


@bpf_policy.command("get")
@click.argument("ref")
@socket_option
@output_option
def bpf_policy_get(ref, socket_path, output):
    """Dump the policy entries the datapath holds for an endpoint."""
    ep = resolve_endpoint(socket_path, ref)
    out = call_agent(socket_path, "GET", "/v1/endpoints/%s/bpf-policy" % ep["key"])
    if output == "json":
        click.echo(json.dumps(out, indent=2))
        return
    click.echo("endpoint %d identity %s enforced ingress=%s egress=%s" % (
        ep["id"], out["identity"], out["enforced"]["ingress"], out["enforced"]["egress"]))
    print_table([[e["direction"], "deny" if e["deny"] else "allow", e["identity"] or "any",
                  e["proto"] or "any", e["ports"], e["packets"]] for e in out["entries"]],
                ["DIRECTION", "ACTION", "IDENTITY", "PROTO", "PORTS", "PACKETS"])
