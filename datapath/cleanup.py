"""Take everything one bpf root owns off the node: filters, cgroup hooks, pins.

Does: find the programs pinned under `<bpf root>/progs`, remove every tc
filter at our slot (see `tc`) whose program is one of them, on every link
of the host namespace, detach those of them that sit on a cgroup's hooks
(socket load-balancing), then unpin the whole root. Used by `cilium-cni
uninstall` with the agent stopped. Does not: touch filters or cgroup
programs of another agent (another bpf root pins other programs), the
clsact qdiscs (others' filters may hang off them), or links inside pod
namespaces (our filters sit on the host veths only).
"""

import errno
import os

from pyroute2.netlink.rtnl import RTM_GETLINK
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from datapath import bpffs, bpfsys, tc
from datapath.rtnl import NetlinkError, Rtnl

HOOKS = {"ingress": tc.HOOK_INGRESS, "egress": tc.HOOK_EGRESS}
# enum bpf_attach_type values whose target is a cgroup (linux/bpf.h): inet
# ingress/egress, sock create/ops, device, bind, connect, post_bind,
# sendmsg, sysctl, recvmsg, sockopt, getpeername, getsockname, sock release.
CGROUP_ATTACH_TYPES = (0, 1, 2, 3, 6, 8, 9, 10, 11, 12, 13, 14, 15, 18, 19, 20, 21, 22, 29, 30,
                       31, 32, 34)


def _pinned_progs(bpf_root):
    """[(pin path, fd)] of the programs pinned under the root; close the fds after."""
    progs = os.path.join(bpf_root, "progs")
    try:
        names = sorted(os.listdir(progs))
    except (FileNotFoundError, NotADirectoryError):
        return []
    out = []
    for name in names:
        path = os.path.join(progs, name)
        try:
            out.append((path, bpfsys.obj_get(path)))
        except OSError:
            continue  # gone meanwhile
    return out


def pinned_prog_ids(bpf_root):
    """{kernel program id: pin path} for the programs pinned under the root."""
    found = {}
    for path, fd in _pinned_progs(bpf_root):
        try:
            prog_id = bpfsys.fdinfo(fd).get("prog_id")  # None: a map pinned among the programs
            if prog_id is not None:
                found[prog_id] = path
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


def detach_cgroups(bpf_root, cgroups):
    """Detach the root's pinned programs from the cgroups' hooks; [(pin, cgroup)] detached."""
    detached = []
    progs = _pinned_progs(bpf_root)
    try:
        for cgroup in dict.fromkeys(cgroups):
            try:
                cg = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
            except OSError:
                continue  # no such cgroup here
            try:
                for path, fd in progs:
                    for kind in CGROUP_ATTACH_TYPES:
                        if bpfsys.prog_detach(cg, fd, kind):
                            detached.append((path, cgroup))
            except OSError as exc:
                if exc.errno != errno.EBADF:
                    raise
                # not a cgroup v2 directory (e.g. the tmpfs /sys/fs/cgroup of
                # a hybrid hierarchy): nothing can be attached there
            finally:
                os.close(cg)
    finally:
        for _, fd in progs:
            os.close(fd)
    return detached


def remove_root(bpf_root, cgroups=()):
    """Detach the root's programs everywhere, then unpin it.

    Returns ([(ifname, hook)] filters removed, [(pin, cgroup)] cgroup hooks detached).
    """
    removed = detach_all(pinned_prog_ids(bpf_root))
    unhooked = detach_cgroups(bpf_root, cgroups)
    bpffs.remove_tree(bpf_root)
    return removed, unhooked
