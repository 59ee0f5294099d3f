"""`cilium-cni install-conf`: put our entry into a node's existing conflist.

The runtime reads the first file (in name order) of `/etc/cni/net.d`, so we
edit the prior plugin's own file in place rather than add one of ours:

- the file must parse, or nothing is touched;
- the first time, the original is kept as `FILE.cilium-cni.bak` (a name
  the runtime does not load) so that uninstalling can restore it;
- the new text is written to a temporary file, synced and renamed over the
  old one, so a runtime never reads half a file;
- running it twice changes nothing; running it with other settings updates
  our entry in place;
- a single-plugin `.conf` becomes a `.conflist` of the same name (the
  `.conf` is moved to its backup name so that it does not shadow the list).

It does not restart anything: runtimes re-read the directory per pod.
`restore()` is the way back (`cilium-cni uninstall`): the backup replaces
the edited file; without a backup, our entry is taken out of it.
"""

import json
import os

BACKUP_SUFFIX = ".cilium-cni.bak"
PLUGIN_TYPE = "cilium-cni"
CONF_SUFFIXES = (".conflist", ".conf", ".json")


class InstallError(Exception):
    pass


def _load(path):
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError) as exc:
        raise InstallError("cannot read '%s': %s" % (path, getattr(exc, "strerror", None) or exc)) from None
    except ValueError as exc:
        raise InstallError("'%s' does not parse as JSON (%s); fix or remove it first"
                           % (path, exc)) from None
    if not isinstance(data, dict):
        raise InstallError("'%s' is not a JSON object" % path)
    return data


def find_target(conf_dir, network=None):
    """The file that defines `network` (or the directory's only network)."""
    try:
        names = sorted(n for n in os.listdir(conf_dir) if n.endswith(CONF_SUFFIXES))
    except OSError as exc:
        raise InstallError("cannot list '%s': %s" % (conf_dir, exc.strerror)) from None
    found = {}
    for name in names:
        path = os.path.join(conf_dir, name)
        found.setdefault(_load(path).get("name"), path)
    if network is not None:
        if network not in found:
            raise InstallError("no network '%s' in %s (found: %s)" % (
                network, conf_dir, ", ".join(sorted(map(str, found))) or "none"))
        return found[network]
    if len(found) != 1:
        raise InstallError("%s defines %s; name one with --target" % (
            conf_dir, "no network" if not found else "networks %s" % ", ".join(
                sorted(map(str, found)))))
    return next(iter(found.values()))


def _as_conflist(data):
    if isinstance(data.get("plugins"), list):
        return dict(data)
    plugin = {k: v for k, v in data.items() if k not in ("cniVersion", "name")}
    return {"cniVersion": data.get("cniVersion"), "name": data.get("name"), "plugins": [plugin]}


def plan(data, entry):
    """The conflist with our entry in place (last in the chain), and whether it changed."""
    conflist = _as_conflist(data)
    plugins = [p for p in conflist["plugins"] if isinstance(p, dict)]
    if len(plugins) != len(conflist["plugins"]):
        raise InstallError("'plugins' must be a list of objects")
    ours = [i for i, p in enumerate(plugins) if p.get("type") == PLUGIN_TYPE]
    if ours:
        i = ours[0]
        merged = dict(plugins[i], **entry)
        changed = merged != plugins[i] or len(ours) > 1
        plugins = [p for j, p in enumerate(plugins) if j not in ours[1:]]
        plugins[i] = merged
    else:
        if not plugins:
            raise InstallError("the conflist has no plugin to chain after")
        plugins.append(dict(entry))
        changed = True
    conflist["plugins"] = plugins
    return conflist, changed


def _write_atomically(path, text):
    tmp = "%s.tmp.%d" % (path, os.getpid())
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def mode_problem(conflist, mode):
    """Why `mode` does not fit the conflist's other plugins, or None."""
    import chainers

    types = [p.get("type") for p in conflist["plugins"] if p.get("type") != PLUGIN_TYPE]
    return chainers.api.lookup(mode).conflist_problem(types)


def check(conf_dir, entry, network=None):
    """What `install` would do: (file to edit, new conflist, changed); changes nothing."""
    path = find_target(conf_dir, network)
    data = _load(path)
    conflist, changed = plan(data, entry)
    problem = mode_problem(conflist, entry["chaining-mode"])
    if problem:
        raise InstallError("%s: %s; pick the mode of the plugin that builds this network "
                           "(generic-veth fits any veth-based plugin)" % (path, problem))
    return path, conflist, changed


def install(conf_dir, entry, network=None):
    """Returns (path written, backup path or None, changed)."""
    path, conflist, changed = check(conf_dir, entry, network)
    if not changed:
        return path, None, False
    target = path if path.endswith(".conflist") else os.path.splitext(path)[0] + ".conflist"
    backup = path + BACKUP_SUFFIX
    if not os.path.exists(backup):
        with open(path, "rb") as src:
            original = src.read()
        with open(backup + ".tmp", "wb") as dst:
            dst.write(original)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(backup + ".tmp", backup)
    _write_atomically(target, json.dumps(conflist, indent=2) + "\n")
    if target != path:
        os.unlink(path)  # its content is in the backup and in the new .conflist
    return target, backup, True


def restore(path, original, backup=None):
    """Undo `install`: put the backup back, or drop our entry; returns what was done."""
    if backup and os.path.exists(backup):
        if path != original and os.path.exists(path):
            os.unlink(path)  # the .conflist made from a .conf
        os.replace(backup, original)
        return "restored %s from %s" % (original, backup)
    if not os.path.exists(path):
        return "%s is gone; nothing to restore" % path
    conflist = _as_conflist(_load(path))
    plugins = [p for p in conflist["plugins"]
               if not (isinstance(p, dict) and p.get("type") == PLUGIN_TYPE)]
    if len(plugins) == len(conflist["plugins"]):
        return "%s does not chain cilium-cni; left as it is" % path
    conflist["plugins"] = plugins
    _write_atomically(path, json.dumps(conflist, indent=2) + "\n")
    return "removed cilium-cni from %s (no backup to restore)" % path
