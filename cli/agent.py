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
@click.option("--kvstore", default=None, type=click.Choice(["", "etcd"]),
              help="'etcd': join a cluster through etcd (default '': this node alone).")
@click.option("--kvstore-endpoints", default=None,
              help="etcd client URLs, comma-separated (http://IP:2379,...).")
@click.option("--kvstore-ca-file", default=None, help="CA bundle of etcd's certificate.")
@click.option("--kvstore-cert-file", default=None, help="Client certificate for etcd.")
@click.option("--kvstore-key-file", default=None, help="The client certificate's key.")
@click.option("--node-name", default=None, help="This node's name in the cluster (default: host name).")
def agent(config_file, socket_path, state_dir, bpf_root, log_file, log_level, log_format,
          metrics_address, socket_lb, kvstore, kvstore_endpoints, kvstore_ca_file,
          kvstore_cert_file, kvstore_key_file, node_name):
    """Run the node agent (root): API, endpoints, eBPF datapath."""
    # imported here: the agent's modules (bcc, prometheus-client) are only for this command
    from agent import config as agent_config
    from agent.main import AgentInUse, MetricsUnavailable, run
    try:
        config = agent_config.load(config_file, {
            "socket": socket_path, "state-dir": state_dir, "bpf-root": bpf_root,
            "log-file": log_file, "log-level": log_level, "log-format": log_format,
            "metrics-address": metrics_address, "socket-lb": socket_lb, "kvstore": kvstore,
            "kvstore-endpoints": ([u.strip() for u in kvstore_endpoints.split(",") if u.strip()]
                                  if kvstore_endpoints is not None else None),
            "kvstore-ca-file": kvstore_ca_file, "kvstore-cert-file": kvstore_cert_file,
            "kvstore-key-file": kvstore_key_file, "node-name": node_name})
    except agent_config.ConfigError as exc:
        raise click.ClickException("invalid agent config: %s" % exc) from None
    from agent.kvstore.etcd import ConfigError as KvstoreConfigError
    from datapath.loader import DatapathError
    try:
        sys.exit(run(config))
    except (AgentInUse, MetricsUnavailable, KvstoreConfigError) as exc:
        raise click.ClickException(str(exc)) from None
    except DatapathError as exc:
        raise click.ClickException("cannot start the datapath: %s" % exc) from None
    except PermissionError as exc:
        raise click.ClickException("permission denied: %s (the agent must run as root)"
                                   % exc) from None
