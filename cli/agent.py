"""`cilium-cni agent`: run the node agent (the `agent` package) in this process."""

import sys

import click

from cli.common import agent_options


@click.command()
@agent_options
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
    # imported here: the agent's modules (bcc, prometheus-client) are only for this command
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
