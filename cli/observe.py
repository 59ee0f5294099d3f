"""`cilium-cni status` and `monitor`: the node's agent on one screen, and the
datapath's events as they happen.

status: agent version and uptime, the chaining modes its endpoints came
through, endpoints healthy / unhealthy, policy revision, every pinned map with its
pressure (entries / capacity), the last endpoint restore, programs of ours
no agent owns (orphans), the kvstore (etcd: reachable, leader, latency, last
error, with a remedy when unreachable), and the last errors the agent
logged. All of it is the agent's `GET /v1/status`; `-o json` prints that
document as it is. monitor: one line per event of the
agent's `GET /v1/monitor` stream (drops, and service translations while asked).
"""

import json
import socket
import sys
import time

import click

from agent.store import human_bytes
from cli.cluster import kvstore_lines
from cli.common import call_agent, output_option, print_table, socket_option

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
    volume = info.get("stateVolume")
    if volume:
        lines.append(("state volume:", volume_summary(volume)))
    orphans = info.get("orphans")
    if "orphans" in info:
        lines.append(("orphans:", "cannot tell (see the agent's log)" if orphans is None else
                      orphan_summary(orphans)))
    if "kvstore" in info:  # an older agent does not report it
        lines += kvstore_lines(info["kvstore"])
    out = ["%-14s %s" % row for row in lines]
    for key in health.get("unhealthyEndpoints") or []:
        out.append("  unhealthy: %s (see 'cilium-cni check')" % key)
    for o in orphans or []:
        out.append("  orphan: %s (program %s) on %s" % (o["name"], o["programId"], o["where"]))
    return out


# Below this the store cannot be trusted to take a burst of ADDs (and their
# write-ahead log, up to 256 KiB before a checkpoint) any more.
STATE_VOLUME_LOW = 4 << 20


def volume_summary(volume):
    """One line on the store's volume: its files, free space, and trouble."""
    used = sum(volume["files"].values())
    line = "%s: store %s, %s free of %s" % (volume["path"], human_bytes(used),
                                            human_bytes(volume["freeBytes"]),
                                            human_bytes(volume["sizeBytes"]))
    if volume.get("lastError"):
        line += "; FULL: %s (ADDs get 'try again' until space is freed)" % volume["lastError"]
    elif volume["freeBytes"] < STATE_VOLUME_LOW:
        line += "; LOW"
    return line


def orphan_summary(orphans):
    """One line on the orphans /v1/status lists."""
    if not orphans:
        return "none"
    return ("%d program(s) of cilium-cni attached that no agent owns: remove them with "
            "'cilium-cni cleanup --orphans'" % len(orphans))


@click.command()
@socket_option
@output_option
def status(socket_path, output):
    """Summarize the node: agent, endpoints, policy, maps, last errors."""
    info = call_agent(socket_path, "GET", "/v1/status")
    if output == "json":
        click.echo(json.dumps(info, indent=2))
        return
    for line in format_status(info):
        click.echo(line)
    maps = info.get("maps") or []
    if maps:
        click.echo("maps:")
        print_table([["  " + m["name"], m["entries"], m["capacity"],
                      "%.1f%%" % (100 * m["pressure"]),
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


@click.command()
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
