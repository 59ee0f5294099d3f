"""What every command group shares: the --socket, -o and --progress options
(and the agent's own paths, for `agent` and `cleanup`),
the agent request that turns its errors into one-line CLI errors, the table
printer, an endpoint looked up by id or CONTAINERID:IFNAME, and the files
`policy import` and `service import` send."""

import os

import click

from cni.attachment import DEFAULT_SOCKET
from cni.client import AgentClient
from cni.errors import CniError

socket_option = click.option("--socket", "socket_path", default=DEFAULT_SOCKET, show_default=True,
                             envvar="CILIUM_CNI_SOCKET", help="The agent's API socket.")
output_option = click.option("-o", "--output", type=click.Choice(["table", "json"]),
                             default="table", show_default=True)


def agent_options(f):
    """--config, --socket, --state-dir, --bpf-root: which agent (`agent` runs
    it, `cleanup` takes it off); None where not given (the config decides)."""
    for opt in reversed([
        click.option("--config", "config_file", type=click.Path(dir_okay=False),
                     help="Agent config YAML (defaults: see conf/agent.yaml)."),
        click.option("--socket", "socket_path", default=None, help="API socket path."),
        click.option("--state-dir", default=None, help="Where the endpoint store lives."),
        click.option("--bpf-root", default=None,
                     help="bpffs directory for pinned programs and maps."),
    ]):
        f = opt(f)
    return f


# long operations: progress on stderr (cli/progress.py), on a terminal or with --progress
progress_option = click.option(
    "--progress", "show_progress", is_flag=True,
    help="Show progress on stderr even when it is not a terminal (never on stdout).")


def call_agent(socket_path, method, url, body=None, ok=(200, 201), timeout=30.0):
    """The agent's decoded answer; any failure is a ClickException with its message."""
    try:
        return AgentClient(socket_path, timeout=timeout).call(method, url, body, ok=ok)[1]
    except CniError as exc:
        raise click.ClickException(exc.msg) from None


def print_table(rows, headers):
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=True)]
    for row in [headers] + rows:
        click.echo("  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)).rstrip())


def resolve_endpoint(socket_path, ref):
    """An endpoint by numeric id or by CONTAINERID:IFNAME."""
    if ref.isdigit():
        for ep in call_agent(socket_path, "GET", "/v1/endpoints"):
            if ep["id"] == int(ref):
                return ep
        raise click.ClickException("no endpoint with id %s" % ref)
    if ":" not in ref:
        raise click.ClickException("endpoint '%s': give an id or CONTAINERID:IFNAME" % ref)
    return call_agent(socket_path, "GET", "/v1/endpoints/%s" % ref)


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
