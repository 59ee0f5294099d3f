"""`cilium-cni endpoint list|get|delete|labels`: the agent's endpoints, one per pod interface."""

import json

import click

from cli.common import call_agent, output_option, print_table, resolve_endpoint, socket_option


@click.group()
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
    eps = call_agent(socket_path, "GET", "/v1/endpoints")
    if output == "json":
        click.echo(json.dumps(eps, indent=2))
    else:
        print_table([_ep_row(ep) for ep in eps], _EP_HEADERS)


@endpoint.command("get")
@click.argument("ref")
@socket_option
@output_option
def endpoint_get(ref, socket_path, output):
    """Show one endpoint (by id or CONTAINERID:IFNAME)."""
    ep = resolve_endpoint(socket_path, ref)
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
    ep = resolve_endpoint(socket_path, ref)
    call_agent(socket_path, "DELETE", "/v1/endpoints/%s" % ep["key"])
    click.echo("deleted endpoint %d (%s)" % (ep["id"], ep["key"]))


@endpoint.command("labels")
@click.argument("ref")
@click.option("--add", "add", multiple=True, metavar="KEY=VALUE", help="Add or change a label.")
@click.option("--delete", "delete", multiple=True, metavar="KEY", help="Remove a label.")
@socket_option
@output_option
def endpoint_labels(ref, add, delete, socket_path, output):
    """Show or change an endpoint's labels; its identity follows at once."""
    ep = resolve_endpoint(socket_path, ref)
    if add or delete:
        ep = call_agent(socket_path, "PUT", "/v1/endpoints/%s/labels" % ep["key"],
                        {"add": list(add), "delete": list(delete)})
    if output == "json":
        click.echo(json.dumps({"id": ep["id"], "identity": ep.get("identity"),
                               "labels": ep.get("labels", [])}, indent=2))
        return
    click.echo("endpoint %d identity %s" % (ep["id"], ep.get("identity")))
    for label in ep.get("labels", []):
        click.echo("  %s" % label)
