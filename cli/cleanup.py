"""`cilium-cni cleanup`: take a stopped agent's datapath and state off the
node, or (`--orphans`) the programs of ours no agent owns any more; the
command line over `cli.teardown`."""

import json

import click

from cli.common import agent_options, output_option


def _config(config_file, overrides):
    from agent import config as agent_config
    try:
        return agent_config.load(config_file, overrides)
    except agent_config.ConfigError as exc:
        raise click.ClickException("invalid agent config: %s" % exc) from None


@click.command()
@agent_options
@click.option("--cgroup-root", default=None, help="Where its socket hooks are attached.")
@click.option("--orphans", is_flag=True,
              help="Only detach programs of ours that no pinned set owns (any agent's; "
                   "running agents keep theirs).")
@click.option("--dry-run", is_flag=True, help="List what would be removed; change nothing.")
@output_option
def cleanup(config_file, socket_path, state_dir, bpf_root, cgroup_root, orphans, dry_run, output):
    """Detach a stopped agent's filters and socket hooks, remove its pins and state."""
    from cli import teardown
    config = _config(config_file, {"socket": socket_path, "state-dir": state_dir,
                                   "bpf-root": bpf_root, "cgroup-root": cgroup_root})
    try:
        if orphans:
            from datapath import cleanup as dp_cleanup
            cgroups = teardown.cgroups_of(config)
            found = (dp_cleanup.find_orphans if dry_run else dp_cleanup.detach_orphans)(cgroups)
            lines, doc = teardown.orphan_lines(found, dry_run), {
                "dryRun": dry_run, "orphans": [a.as_dict() for a in found]}
        else:
            done = (teardown.plan if dry_run else teardown.carry_out)(config)
            lines, doc = teardown.plan_lines(done, dry_run), dict(
                {"dryRun": dry_run}, **done.as_dict())
    except teardown.CleanupError as exc:
        raise click.ClickException(str(exc)) from None
    except PermissionError as exc:
        raise click.ClickException("permission denied: %s (cleanup must run as root)"
                                   % exc) from None
    if output == "json":
        click.echo(json.dumps(doc, indent=2))
    else:
        for line in lines:
            click.echo(line)
