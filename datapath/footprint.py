"""What of ours sits on the node: attached programs, pinned sets, orphans.

Does: recognise our programs (by the names the kernel reports and their
type), list where they are attached (the tc slot of every link of this
network namespace, the socket hooks of the cgroup roots), find every
pinned set (`<root>/progs/<program>` on any bpffs mount), and name the
orphans: attached programs of ours whose id no pinned set holds. Only
reads; `cleanup` takes things off.

Why pins decide ownership: an agent's set is pinned under its bpf root
while it runs and after it stops (a restarted agent re-uses it), so a
pinned set always has an owner, even several agents side by side (tests,
node namespaces of a lab). A program attached with no pin left (its root
removed by hand) has none: nothing will ever detach it, and its hooks run
on every connect() below the cgroup (docs/operations.md, "Orphans").
"""

import errno
import os
from typing import NamedTuple

from pyroute2.netlink.rtnl import RTM_GETLINK
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from datapath import bpfsys, socklb, tc
from datapath.loader import FILTER_NAME_PREFIX, HOOKS, NETDEV_HOOKS
from datapath.rtnl import NetlinkError, Rtnl

BPF_PROG_TYPE_SCHED_CLS = 3
BPF_PROG_TYPE_CGROUP_SOCK_ADDR = 18
KERNEL_NAME_MAX = 15  # BPF_OBJ_NAME_LEN - 1: longer names come back truncated

TC_PROGRAMS = {h.program for h in HOOKS + NETDEV_HOOKS}
# Our programs as the kernel names them, with the type each must have: a
# foreign program that happens to share a name has another type, or sits
# elsewhere than our tc slot.
OUR_NAMES = {
    **{name[:KERNEL_NAME_MAX]: BPF_PROG_TYPE_SCHED_CLS for name in TC_PROGRAMS},
    **{name[:KERNEL_NAME_MAX]: BPF_PROG_TYPE_CGROUP_SOCK_ADDR for name in socklb.PROGRAMS},
}
SOCKET_HOOKS = dict.fromkeys(socklb.PROGRAMS.values())  # attach types, each once
TC_HOOKS = {"ingress": tc.HOOK_INGRESS, "egress": tc.HOOK_EGRESS}
# Where socket load-balancing may have attached: the configured root, the
# v2 root of a hybrid hierarchy, and that of a pure v2 one.
CGROUP_ROOTS = ("/sys/fs/cgroup/unified", "/sys/fs/cgroup")


class Attached(NamedTuple):
    """One program on one hook: a link's tc slot or a cgroup's socket hook."""

    prog_id: int
    name: str  # the kernel's (truncated) name
    kind: str  # "tc" or "cgroup"
    target: str  # link name, or cgroup path
    hook: str  # "ingress"/"egress", or the attach type's number
    ifindex: int = 0  # links only

    def where(self) -> str:
        if self.kind == "tc":
            return f"link {self.target} {self.hook}"
        return f"cgroup {self.target} ({_HOOK_NAMES.get(int(self.hook), self.hook)})"

    def as_dict(self) -> dict:
        return {"programId": self.prog_id, "name": self.name, "where": self.where()}


_HOOK_NAMES = {int(kind): name.removeprefix("sock_") for name, kind in socklb.PROGRAMS.items()}


def cgroup_roots(*configured: str) -> list[str]:
    """The cgroup roots to look at: those given first, then the usual ones, each once."""
    return list(dict.fromkeys(p.rstrip("/") or "/" for p in (*configured, *CGROUP_ROOTS) if p))


def _info(prog_id: int) -> bpfsys.ProgInfo | None:
    fd = bpfsys.prog_fd_by_id(prog_id)
    if fd is None:
        return None  # freed meanwhile
    try:
        return bpfsys.prog_info(fd)
    finally:
        os.close(fd)


def is_ours(info: bpfsys.ProgInfo) -> bool:
    return OUR_NAMES.get(info.name) == info.type


def on_links() -> list[Attached]:
    """Every filter at our tc slot on the links of this network namespace
    that carries our name and runs a program of ours."""
    found = []
    with Rtnl() as rtnl:
        for link in rtnl.dump(ifinfmsg(), RTM_GETLINK):
            ifindex, ifname = link["index"], link.get_attr("IFLA_IFNAME")
            for hook_name, hook in TC_HOOKS.items():
                try:
                    flt = tc.find_slot(rtnl, ifindex, hook)
                except NetlinkError as exc:
                    if exc.code in (errno.ENODEV, errno.ENOENT, errno.EINVAL):
                        continue  # link gone, or no clsact qdisc on it
                    raise
                name = tc.bpf_filter_name(flt) if flt is not None else None
                if not name or not name.startswith(FILTER_NAME_PREFIX) or \
                        name[len(FILTER_NAME_PREFIX):] not in TC_PROGRAMS:
                    continue
                prog_id = tc.bpf_filter_prog_id(flt)
                info = _info(prog_id) if prog_id else None
                if info is not None and is_ours(info):
                    found.append(Attached(prog_id, info.name, "tc", ifname, hook_name, ifindex))
    return found


def on_cgroups(cgroups) -> list[Attached]:
    """Every program of ours attached to the cgroups' socket hooks (the
    cgroups themselves, not what they inherit). A path that is missing or
    no cgroup v2 directory holds nothing."""
    found = []
    for cgroup in dict.fromkeys(cgroups):
        try:
            cg = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            continue
        try:
            for kind in SOCKET_HOOKS:
                try:
                    ids = bpfsys.prog_query(cg, kind)
                except bpfsys.BpfError as exc:
                    if exc.errno in (errno.EBADF, errno.EINVAL):
                        break  # e.g. the tmpfs /sys/fs/cgroup of a hybrid hierarchy
                    raise
                for prog_id in ids:
                    info = _info(prog_id)
                    if info is not None and is_ours(info):
                        found.append(Attached(prog_id, info.name, "cgroup", cgroup, str(int(kind))))
        finally:
            os.close(cg)
    return found


def attached(cgroups) -> list[Attached]:
    """Every program of ours attached on this node's links and the cgroups."""
    return on_links() + on_cgroups(cgroups)


def _bpffs_mounts() -> list[str]:
    with open("/proc/self/mounts") as f:
        return list(dict.fromkeys(line.split()[1] for line in f if line.split()[2:3] == ["bpf"]))


def _progs_dirs(top: str):
    """Every `progs` directory below `top` (bpffs trees are small: a walk
    costs a few ms, and a set pinned deeper than expected must still count)."""
    for dirpath, dirnames, _ in os.walk(top):
        if "progs" in dirnames:
            yield os.path.join(dirpath, "progs")


def pinned_ids(progs_dir: str) -> dict[int, str]:
    """{program id: pin path} of the programs pinned in one `progs` directory."""
    found = {}
    try:
        names = sorted(os.listdir(progs_dir))
    except (FileNotFoundError, NotADirectoryError):
        return found
    for name in names:
        path = os.path.join(progs_dir, name)
        try:
            fd = bpfsys.obj_get(path)
        except OSError:
            continue  # gone meanwhile
        try:
            prog_id = bpfsys.fdinfo(fd).get("prog_id")  # None: a map pinned among the programs
        finally:
            os.close(fd)
        if prog_id is not None:
            found[prog_id] = path
    return found


def pinned_everywhere(*roots: str) -> dict[int, str]:
    """{program id: pin path} of every pinned set on the node's bpffs
    mounts (and under `roots`, wherever they are)."""
    dirs = [os.path.join(r, "progs") for r in roots]
    for mount in _bpffs_mounts():
        dirs += _progs_dirs(mount)
    found = {}
    for d in dict.fromkeys(dirs):
        found.update(pinned_ids(d))
    return found


def _unpinned_candidates(pinned) -> dict[int, int]:
    """{id: program type} of the live programs of ours that no set pins:
    every orphan is one (reading a few hundred programs takes ~0.1 ms), so
    links and cgroups are looked at only for the kinds found here."""
    out = {}
    for prog_id in bpfsys.prog_ids():
        if prog_id in pinned:
            continue
        info = _info(prog_id)
        if info is not None and is_ours(info):
            out[prog_id] = info.type
    return out


def orphans(cgroups, roots=()) -> list[Attached]:
    """Programs of ours attached to the links or cgroups that no pinned set owns."""
    candidates = _unpinned_candidates(pinned_everywhere(*roots))
    kinds = set(candidates.values())
    found = on_links() if BPF_PROG_TYPE_SCHED_CLS in kinds else []
    if BPF_PROG_TYPE_CGROUP_SOCK_ADDR in kinds:
        found += on_cgroups(cgroups)
    return [a for a in found if a.prog_id in candidates]
