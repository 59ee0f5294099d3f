"""`cilium-cni status`: one screen about the node's agent.

Agent version and uptime, the chaining modes its endpoints came through,
endpoints healthy / unhealthy, policy revision, every pinned map with its
pressure (entries / capacity), the last endpoint restore, and the last
errors the agent logged. All of it is the agent's `GET /v1/status`; `-o
json` prints that document as it is.
"""

import json
import sys
import time

import click

from cni.cli import _agent, _table, cli, output_option, socket_option

PRESSURE_WARN = 0.9


def _duration(seconds):
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return "%dd%02dh%02dm" % (days, hours, minutes)
    if hours:
        return "%dh%02dm%02ds" % (hours, minutes, secs)
    return "%dm%02ds" % (minutes, secs) if minutes else "%ds" % secs


def _clock(stamp):
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))


def format_status(info):
    """The text form of /v1/status, as lines."""
    health = info.get("endpointHealth") or {}
    modes = info.get("chainingModes") or {}
    lines = [
        ("agent:", "cilium-cni %s, pid %s, up %s" % (info["version"], info["pid"],
                                                      _duration(info["uptimeSeconds"]))),
        ("socket:", info["socket"]),
        ("bpf root:", info["bpfRoot"]),
        ("chaining:", ", ".join("%s (%d)" % kv for kv in sorted(modes.items())) or "-"),
        ("endpoints:", "%d (%d healthy, %d unhealthy)" % (
            info["endpoints"], health.get("healthy", info["endpoints"]),
            health.get("unhealthy", 0))),
        ("policy:", "revision %d, %d rule(s)%s" % (
            info["policyRevision"], info["policyRules"],
            ", watching %s" % info["policyDir"] if info.get("policyDir") else "")),
        ("metrics:", "http://%s/metrics" % info["metricsAddress"]
         if info.get("metricsAddress") else "off"),
        ("queue:", "%d change(s) waiting" % info["queueDepth"]),
    ]
    restore = info.get("restore")
    if restore:
        lines.append(("last restore:", "%d endpoint(s) in %.2f s (%s)" % (
            restore.get("total") or 0, restore["seconds"], restore["state"])))
    out = ["%-14s %s" % row for row in lines]
    for key in health.get("unhealthyEndpoints") or []:
        out.append("  unhealthy: %s (see 'cilium-cni check')" % key)
    return out


@cli.command()
@socket_option
@output_option
def status(socket_path, output):
    """Summarize the node: agent, endpoints, policy, maps, last errors."""
    info = _agent(socket_path, "GET", "/v1/status")
    if output == "json":
        click.echo(json.dumps(info, indent=2))
        return
    for line in format_status(info):
        click.echo(line)
    maps = info.get("maps") or []
    if maps:
        click.echo("maps:")
        _table([["  " + m["name"], m["entries"], m["capacity"], "%.1f%%" % (100 * m["pressure"]),
                 "FULL SOON" if m["pressure"] >= PRESSURE_WARN else ""] for m in maps],
               ["  MAP", "ENTRIES", "CAPACITY", "PRESSURE", ""])
    errors = info.get("lastErrors") or []
    click.echo("last errors:" if errors else "last errors:   none")
    for e in errors:
        pod = " ".join("%s=%s" % (k, e[k]) for k in ("containerID", "ifname", "podNamespace",
                                                      "podName") if e.get(k))
        click.echo("  %s %s %s%s" % (_clock(e["time"]), e["level"], e["msg"],
                                     " (%s)" % pod if pod else ""))
    sys.stdout.flush()
