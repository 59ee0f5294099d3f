"""`cilium-cni node list` and `kvstore list|get`: the cluster seen from this
node's agent (`kvstore: etcd`), and the one-line kvstore health that
`status` and `check` print.

Everything is read through the agent's API (GET /v1/nodes, /v1/kvstore,
/v1/status): the CLI needs no etcd client, no certificates and no
endpoints of its own. `kvstore` only reads.
"""

import json
import time
from urllib.parse import urlencode

import click

from cli.common import call_agent, output_option, print_table, socket_option

REMEDY = ("check kvstore-endpoints and that a quorum of etcd members runs; pods keep their "
          "enforcement, new label sets fail with code 11 until it returns")


def kvstore_health(kv):
    """(ok, detail, remedy) of the `kvstore` section of /v1/status."""
    where = "etcd at %s" % ", ".join(kv["endpoints"])
    if not kv["reachable"]:
        cause = kv.get("lastError") or "no answer"
        prefix = where + ": "
        if cause.startswith(prefix):  # the agent's errors already name the endpoints
            cause = cause[len(prefix):]
        return False, "%s unreachable: %s" % (where, cause), REMEDY
    parts = ["%s reachable" % where]
    if kv.get("version"):
        parts[0] += " (etcd %s)" % kv["version"]
    if kv.get("leader"):
        parts.append("leader %s" % kv["leader"])
    if kv.get("latencyMs") is not None:
        parts.append("%.1f ms" % kv["latencyMs"])
    parts.append("node %s, %d node(s), revision %d" % (kv["node"], kv["nodes"], kv["revision"]))
    if kv["pendingWrites"]:
        parts.append("%d write(s) pending" % kv["pendingWrites"])
    return True, ", ".join(parts), ""


def kvstore_lines(kv):
    """The text of `status` for the kvstore: (label, text) rows."""
    if kv is None:
        return [("kvstore:", "none (this node alone: identities in its own store)")]
    ok, detail, remedy = kvstore_health(kv)
    rows = [("kvstore:", detail if ok else "UNREACHABLE: " + detail)]
    if remedy:
        rows.append(("", "remedy: " + remedy))
    synced = time.strftime("%H:%M:%S", time.localtime(kv["syncedAt"])) if kv["syncedAt"] else "never"
    rows.append(("", "prefix %s, lease %s, synced %s, %d watch event(s), %d re-list(s), policy "
                 "revision %d%s" % (kv["prefix"], kv["lease"] or "-", synced, kv["watchEvents"],
                                    kv["relists"], kv["policyRevision"],
                                    ", collects unused identities" if kv["gcLeader"] else "")))
    if kv.get("lastError") and ok:
        rows.append(("", "last error (%s): %s" % (
            time.strftime("%H:%M:%S", time.localtime(kv["lastErrorAt"])), kv["lastError"])))
    return rows


@click.group()
def node():
    """The nodes of the cluster (agents with kvstore: etcd)."""


@node.command("list")
@socket_option
@output_option
def node_list(socket_path, output):
    """List the nodes that share this node's etcd, with addresses, pod CIDRs and health."""
    nodes = call_agent(socket_path, "GET", "/v1/nodes")
    if output == "json":
        click.echo(json.dumps(nodes, indent=2))
        return
    rows = [[("*" if n["self"] else "") + n["name"], ",".join(n["addresses"]) or "-",
             ",".join(n["podCIDRs"]) or "-", n["version"] or "-", n["health"],
             time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(n["startedAt"]))
             if n["startedAt"] else "-"] for n in nodes]
    print_table(rows, ["NAME", "ADDRESSES", "POD-CIDRS", "VERSION", "HEALTH", "STARTED"])


@click.group()
def kvstore():
    """Read the cluster's keys in etcd (debugging; never writes).

    KEY and PREFIX are relative to the agent's kvstore-prefix (e.g.
    'nodes/v1/'), or absolute when they start with it
    ('cilium-cni/nodes/v1/'); keys outside it cannot be read.
    """


def _value_text(item):
    if item["encoding"] == "escaped":
        return item["value"]
    try:
        return json.dumps(json.loads(item["value"]), sort_keys=True)
    except ValueError:
        return item["value"]


def _short(item, width=80):
    text = _value_text(item)
    return text[:width] + "..." if item["truncated"] or len(text) > width else text


@kvstore.command("list")
@click.argument("prefix", default="")
@click.option("--limit", type=click.IntRange(1, 10000), default=100, show_default=True,
              help="List at most this many keys.")
@socket_option
@output_option
def kvstore_list(prefix, limit, socket_path, output):
    """List keys under PREFIX (default: every key of the cluster), values cut to 1 KiB.

    PREFIX is relative to the agent's kvstore-prefix, or absolute when it
    starts with it.
    """
    out = call_agent(socket_path, "GET", "/v1/kvstore?" + urlencode(
        {"prefix": prefix, "limit": str(limit)}))
    if output == "json":
        click.echo(json.dumps(out, indent=2))
        return
    print_table([[i["key"], i["size"], i["lease"] or "-", _short(i)] for i in out["items"]],
                ["KEY", "BYTES", "LEASE", "VALUE"])
    click.echo("%d key(s) under %s at revision %d%s" % (
        out["count"], out["prefix"], out["revision"],
        " (%d shown: --limit)" % len(out["items"]) if out["truncated"] else ""))


@kvstore.command("get")
@click.argument("key")
@socket_option
@output_option
def kvstore_get(key, socket_path, output):
    """Print one key's value (JSON pretty-printed; bytes that are not text escaped as \\xNN).

    KEY is relative to the agent's kvstore-prefix, or absolute when it
    starts with it.
    """
    item = call_agent(socket_path, "GET", "/v1/kvstore?" + urlencode({"key": key}))
    if output == "json":
        click.echo(json.dumps(item, indent=2))
        return
    value = item["value"]
    if item["encoding"] == "text":
        try:
            value = json.dumps(json.loads(value), indent=2, sort_keys=True)
        except ValueError:
            pass
    click.echo(value)
