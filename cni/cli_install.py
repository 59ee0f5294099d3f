"""`cilium-cni install` / `uninstall`: the command line over `cni.install`."""

import click

from cni.cli import cli
from cni.install import DEFAULT_PLUGIN_LOG


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
    from cni.install import Layout
    return Layout.under(root, bin_dir, conf_dir, config_dir, unit_dir)


def _report(what, run):
    """Run an install step and print its lines; its failures become the CLI's error message."""
    from cni import install_conf
    from cni.install import InstallError
    try:
        lines = run()
    except (InstallError, install_conf.InstallError) as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException("%s failed: %s" % (what, exc)) from None
    for line in lines:
        click.echo(line)


@cli.command()
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
    import chainers
    from cni.install import install as do_install
    from cni.install import running_binary
    if chaining_mode not in chainers.api.names():
        raise click.BadParameter("unknown chaining mode '%s': valid modes are %s"
                                 % (chaining_mode, ", ".join(chainers.api.names())),
                                 param_hint="--chaining-mode")
    layout = _layout(root, bin_dir, conf_dir, config_dir, unit_dir)
    _report("install", lambda: do_install(layout, binary or running_binary(), chaining_mode, network,
                                          agent_config, not no_agent, start_agent, plugin_log))


@cli.command()
@_layout_options
def uninstall(root, bin_dir, conf_dir, config_dir, unit_dir):
    """Undo install: stop the agent it started, detach, unpin, restore the conflist."""
    from cni.install import uninstall as do_uninstall
    _report("uninstall", lambda: do_uninstall(_layout(root, bin_dir, conf_dir, config_dir, unit_dir)))
