"""Take programs of ours off the node: one bpf root's, or the orphans.

Does: find and detach the tc filters and cgroup socket hooks that run one
bpf root's pinned programs, on every link of this network namespace and
the given cgroups (`root_attachments`, `detach`: what `cilium-cni cleanup`
and `uninstall` run with the agent stopped, before they unpin the root;
`remove_root` does all three); detach the orphans, attached programs of
ours that no pinned set owns (`detach_orphans`, `cleanup --orphans`).
What is ours and where it sits is `footprint`'s. Does not:
touch another root's programs (they are pinned elsewhere), foreign
programs, the clsact qdiscs (others' filters may hang off them), or links
inside pod namespaces (our filters sit on the host veths only).
"""

import errno
import os
import time

from datapath import bpffs, bpfsys, footprint, tc
from datapath.rtnl import NetlinkError, Rtnl

# An agent attaches a new program a moment before it pins it (and unpins
# an old one a moment before detaching it): an orphan must still be one
# this long after it was first seen.
ORPHAN_SETTLE_SECONDS = 0.5


def pinned_prog_ids(bpf_root):
    """{kernel program id: pin path} for the programs pinned under the root."""
    return footprint.pinned_ids(os.path.join(bpf_root, "progs"))


def pins(bpf_root):
    """Every object pinned under the root (paths, sorted); none if there is no root."""
    if not bpffs.is_bpffs(bpf_root):
        return []
    return sorted(os.path.join(d, n) for d, _, names in os.walk(bpf_root) for n in names)


def root_attachments(bpf_root, cgroups):
    """Where the root's pinned programs are attached: [footprint.Attached]."""
    ids = pinned_prog_ids(bpf_root)
    if not ids:
        return []
    return [a for a in footprint.attached(cgroups) if a.prog_id in ids]


def _detach_filter(rtnl, att):
    hook = footprint.TC_HOOKS[att.hook]
    try:
        flt = tc.find_slot(rtnl, att.ifindex, hook)
        if flt is None or tc.bpf_filter_prog_id(flt) != att.prog_id:
            return False  # replaced or removed meanwhile: not what we were asked to take off
        tc.delete_slot(rtnl, att.ifindex, hook)
    except NetlinkError as exc:
        if exc.code in (errno.ENODEV, errno.ENOENT, errno.EINVAL):
            return False  # the link went meanwhile
        raise
    return True


def _detach_hook(att):
    fd = bpfsys.prog_fd_by_id(att.prog_id)
    if fd is None:
        return False
    try:
        cg = os.open(att.target, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        os.close(fd)
        return False
    try:
        return bpfsys.prog_detach(cg, fd, int(att.hook))
    finally:
        os.close(cg)
        os.close(fd)


def detach(attachments):
    """Take each attachment off (a filter only while it still runs that
    program); returns those that were."""
    done = [a for a in attachments if a.kind == "cgroup" and _detach_hook(a)]
    filters = [a for a in attachments if a.kind == "tc"]
    if filters:
        with Rtnl() as rtnl:
            done += [a for a in filters if _detach_filter(rtnl, a)]
    return done


def remove_root(bpf_root, cgroups=()):
    """Detach the root's programs everywhere, then unpin it.

    Returns ([footprint.Attached] detached, [pin path] removed).
    """
    detached = detach(root_attachments(bpf_root, cgroups))
    removed = pins(bpf_root)
    bpffs.remove_tree(bpf_root)
    return detached, removed


def find_orphans(cgroups, roots=(), settle=ORPHAN_SETTLE_SECONDS):
    """The orphans seen twice, `settle` seconds apart (an agent mid-load
    holds an unpinned program for a moment; it is not an orphan)."""
    first = footprint.orphans(cgroups, roots)
    if not first or not settle:
        return first
    time.sleep(settle)
    again = set(footprint.orphans(cgroups, roots))
    return [a for a in first if a in again]


def detach_orphans(cgroups, roots=(), settle=ORPHAN_SETTLE_SECONDS):
    """Detach the orphans; returns those detached."""
    return detach(find_orphans(cgroups, roots, settle))
