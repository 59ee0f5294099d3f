"""The operator's command line (`cilium-cni` without CNI_COMMAND): the click
group, `version`, and every command group registered in one visible place.

Commands that talk to the agent take `--socket PATH` and `-o json`; errors
print one line naming what was wrong and exit non-zero, never a traceback.
Each group lives in its own module (cli/endpoint.py, cli/policy.py, ...)
and shares only cli/common.py.
"""

import json

import click

from cli import agent, check, cleanup, cluster, endpoint, install, observe, policy, service
from cli.common import output_option
from cni import __version__ as VERSION
from cni import version as cni_version


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli():
    """cilium-cni: identity-aware eBPF datapath chained after another CNI plugin.

    With CNI_COMMAND set, the same executable is the CNI plugin.
    """


@cli.group()
def bpf():
    """What the datapath holds."""


@cli.command()
@output_option
def version(output):
    """Print the version and the CNI spec versions supported."""
    if output == "json":
        click.echo(json.dumps({"version": VERSION, "cniVersions": list(cni_version.SUPPORTED)},
                              indent=2))
        return
    click.echo("cilium-cni %s (CNI %s)" % (VERSION, ", ".join(cni_version.SUPPORTED)))


for command in (agent.agent, check.check, cleanup.cleanup, endpoint.endpoint, install.install,
                install.uninstall, install.install_conf, cluster.kvstore, cluster.node,
                observe.monitor, observe.status, policy.identity, policy.policy, service.service):
    cli.add_command(command)
bpf.add_command(policy.bpf_policy)
bpf.add_command(service.bpf_lb)
