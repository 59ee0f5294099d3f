"""`cilium-cni install` / `uninstall` / `install-conf`: the command line over
`cli.installer` (the node) and `cli.install_conf` (the conflist alone)."""

import click

from cli.installer import DEFAULT_PLUGIN_LOG
from cni.attachment import DEFAULT_SOCKET


def _layout_options(f):
    for opt in reversed([
        click.option("--root", default="/", show_default=True, type=click.Path(file_okay=False),
                     help="Prefix of every path below (a temporary tree for tests)."),
        click.option("--bin-dir", default=None, help="CNI bin dir [ROOT/opt/cni/bin]."),
        click.option("--conf-dir", default=None, help="CNI conf dir [ROOT/etc/cni/net.d]."),
        click.option("--config-dir", default=None,
                     help="agent.yaml and the install record [ROOT/etc/cilium-cni]."),
        click.option("--unit-dir", default=None,
                     help="systemd unit dir [ROOT/etc/systemd/system]."),
    ]):
        f = opt(f)
    return f


def _layout(root, bin_dir, conf_dir, config_dir, unit_dir):
    from cli.installer import Layout
    return Layout.under(root, bin_dir, conf_dir, config_dir, unit_dir)


def _report(what, run):
    """Run an install step and print its lines; its failures become the CLI's error message."""
    from cli.install_conf import InstallError as ConflistError
    from cli.installer import InstallError
    try:
        lines = run()
    except (InstallError, ConflistError) as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException("%s failed: %s" % (what, exc)) from None
    for line in lines:
        click.echo(line)


def _known_mode(chaining_mode):
    import chainers
    if chaining_mode not in chainers.api.names():
        raise click.BadParameter("unknown chaining mode '%s': valid modes are %s"
                                 % (chaining_mode, ", ".join(chainers.api.names())),
                                 param_hint="--chaining-mode")


@click.command()
@click.option("--chaining-mode", required=True, help="How the prior plugin shapes the pod's network.")
@click.option("--target", "network", default=None, help="The network (conflist name) to join.")
@click.option("--binary", default=None, type=click.Path(dir_okay=False),
              help="Executable to install [this one].")
@click.option("--agent-config", default=None, type=click.Path(dir_okay=False),
              help="Agent config to write if ROOT/etc/cilium-cni/agent.yaml is absent "
                   "[the default one].")
@click.option("--plugin-log", default=DEFAULT_PLUGIN_LOG, show_default=True,
              help="The plugin's log file (in the conflist entry).")
@click.option("--no-agent", is_flag=True,
              help="Binary and conflist only, no unit (a DaemonSet's init container).")
@click.option("--start", "start_agent", is_flag=True,
              help="Without systemd running, start the agent as a background process.")
@_layout_options
def install(chaining_mode, network, binary, agent_config, plugin_log, no_agent, start_agent,
            root, bin_dir, conf_dir, config_dir, unit_dir):
    """Install the binary, agent config, systemd unit and conflist entry on this node."""
    from cli.installer import install as do_install
    from cli.installer import running_binary
    _known_mode(chaining_mode)
    layout = _layout(root, bin_dir, conf_dir, config_dir, unit_dir)
    _report("install", lambda: do_install(layout, binary or running_binary(), chaining_mode, network,
                                          agent_config, not no_agent, start_agent, plugin_log))


@click.command()
@_layout_options
def uninstall(root, bin_dir, conf_dir, config_dir, unit_dir):
    """Undo install: stop the agent it started, detach, unpin, restore the conflist."""
    from cli.installer import uninstall as do_uninstall
    _report("uninstall", lambda: do_uninstall(_layout(root, bin_dir, conf_dir, config_dir, unit_dir)))


@click.command("install-conf")
@click.option("--chaining-mode", required=True, help="How the prior plugin shapes the pod's network.")
@click.option("--target", "network", default=None, help="The network (conflist name) to join.")
@click.option("--conf-dir", default="/etc/cni/net.d", show_default=True)
@click.option("--agent-socket", default=DEFAULT_SOCKET, show_default=True)
@click.option("--log-file", default=DEFAULT_PLUGIN_LOG, show_default=True)
def install_conf(chaining_mode, network, conf_dir, agent_socket, log_file):
    """Insert cilium-cni into the node's existing conflist (atomic, with a backup)."""
    from cli.install_conf import InstallError, install
    _known_mode(chaining_mode)
    entry = {"type": "cilium-cni", "chaining-mode": chaining_mode, "agent-socket": agent_socket,
             "log-file": log_file}
    try:
        path, backup, changed = install(conf_dir, entry, network)
    except InstallError as exc:
        raise click.ClickException(str(exc)) from None
    if not changed:
        click.echo("%s already chains cilium-cni (%s); nothing changed" % (path, chaining_mode))
    else:
        click.echo("cilium-cni (%s) added to %s; original kept as %s" % (chaining_mode, path, backup))
