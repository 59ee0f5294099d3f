"""Take everything one bpf root owns off the node: filters, then pins.

Does: find the programs pinned under `<bpf root>/progs`, remove every tc
filter at our slot (see `tc`) whose program is one of them, on every link
of the host namespace, then unpin the whole root. Used by `cilium-cni
uninstall` with the agent stopped. Does not: touch filters of another
agent (another bpf root pins other programs), the clsact qdiscs (others'
filters may hang off them), or links inside pod namespaces (our filters
sit on the host veths only). There are no cgroup programs to detach: the
datapath attaches tc programs only.
"""

import errno
import os

from pyroute2.netlink.rtnl import RTM_GETLINK
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from datapath import bpffs, bpfsys, tc
from datapath.rtnl import NetlinkError, Rtnl

HOOKS = {"ingress": tc.HOOK_INGRESS, "egress": tc.HOOK_EGRESS}


def pinned_prog_ids(bpf_root):
    """{kernel program id: pin path} for the programs pinned under the root."""
    progs = os.path.join(bpf_root, "progs")
    found = {}
    try:
        names = sorted(os.listdir(progs))
    except (FileNotFoundError, NotADirectoryError):
        return found
    for name in names:
        path = os.path.join(progs, name)
        try:
            fd = bpfsys.obj_get(path)
        except OSError:
            continue  # not a program pin (or gone meanwhile)
        try:
            with open("/proc/self/fdinfo/%d" % fd) as f:
                for line in f:
                    if line.startswith("prog_id:"):
                        found[int(line.split(":")[1])] = path
        finally:
            os.close(fd)
    return found


def detach_all(prog_ids):
    """Remove our-slot filters running one of `prog_ids`; [(ifname, hook)] removed."""
    removed = []
    if not prog_ids:
        return removed
    with Rtnl() as rtnl:
        for link in rtnl.dump(ifinfmsg(), RTM_GETLINK):
            ifindex, ifname = link["index"], link.get_attr("IFLA_IFNAME")
            for hook_name, hook in HOOKS.items():
                try:
                    flt = tc.find_slot(rtnl, ifindex, hook)
                    if flt is None or tc.bpf_filter_prog_id(flt) not in prog_ids:
                        continue
                    tc.delete_slot(rtnl, ifindex, hook)
                except NetlinkError as exc:
                    if exc.code in (errno.ENODEV, errno.ENOENT, errno.EINVAL):
                        continue  # link gone, or no clsact qdisc on it
                    raise
                removed.append((ifname, hook_name))
    return removed


def remove_root(bpf_root):
    """Detach the root's programs everywhere, then unpin it; returns detached filters."""
    removed = detach_all(pinned_prog_ids(bpf_root))
    bpffs.remove_tree(bpf_root)
    return removed
