"""tc clsact plumbing for bpf filters at one fixed slot, over `rtnl`.

Does: create the clsact qdisc, create / replace / find / delete the cls_bpf
filter at our slot (priority 1, handle 1, all protocols) on a clsact hook,
and read a filter's name and program id. Does not: decide which filter is
ours or what to do about a foreign one (the loader does), or touch any other
slot or the qdisc's other filters.

Priority 1 is the first a filter can have (0 asks the kernel to pick), so
nothing classifies before us and ends classification early.
"""

import socket
import struct

from pyroute2.netlink import NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE
from pyroute2.netlink.rtnl import RTM_DELTFILTER, RTM_GETTFILTER, RTM_NEWQDISC, RTM_NEWTFILTER
from pyroute2.netlink.rtnl.tcmsg import tcmsg

from datapath.rtnl import Rtnl, nested_attrs

PRIO = 1
HANDLE = 1

TC_H_CLSACT = 0xFFFFFFF1
CLSACT_HANDLE = 0xFFFF0000
HOOK_INGRESS = 0xFFFFFFF2
HOOK_EGRESS = 0xFFFFFFF3
ETH_P_ALL = 0x0003

TCA_BPF_NAME = 7
TCA_BPF_ID = 11
TCA_BPF_FLAG_ACT_DIRECT = 1


def add_clsact(rtnl: Rtnl, ifindex: int) -> None:
    """Create the clsact qdisc; NetlinkError EEXIST if there already is one."""
    msg = tcmsg()
    msg["index"] = ifindex
    msg["handle"] = CLSACT_HANDLE
    msg["parent"] = TC_H_CLSACT
    msg["attrs"] = [("TCA_KIND", "clsact")]
    rtnl.request(msg, RTM_NEWQDISC, NLM_F_CREATE | NLM_F_EXCL)


def _slot_msg(ifindex: int, hook: int) -> tcmsg:
    msg = tcmsg()
    msg["index"] = ifindex
    msg["handle"] = HANDLE
    msg["parent"] = hook
    msg["info"] = (PRIO << 16) | socket.htons(ETH_P_ALL)
    return msg


def put_bpf_filter(rtnl: Rtnl, ifindex: int, hook: int, fd: int, name: str, replace: bool) -> None:
    """Create (EEXIST if taken) or replace the direct-action filter at our slot.

    A replace swaps the program of the existing cls_bpf handle in place: no
    packet passes the hook unfiltered meanwhile.
    """
    msg = _slot_msg(ifindex, hook)
    # TCA_KIND must precede TCA_OPTIONS: pyroute2 picks the options encoder
    # by kind.
    msg["attrs"] = [
        ("TCA_KIND", "bpf"),
        (
            "TCA_OPTIONS",
            {
                "attrs": [
                    ("TCA_BPF_FD", fd),
                    ("TCA_BPF_NAME", name),
                    ("TCA_BPF_FLAGS", TCA_BPF_FLAG_ACT_DIRECT),
                ]
            },
        ),
    ]
    rtnl.request(msg, RTM_NEWTFILTER, NLM_F_CREATE | (NLM_F_REPLACE if replace else NLM_F_EXCL))


def find_slot(rtnl: Rtnl, ifindex: int, hook: int):
    """The filter at our slot on `hook`, whoever put it there, or None."""
    msg = tcmsg()
    msg["index"] = ifindex
    msg["parent"] = hook
    for flt in rtnl.dump(msg, RTM_GETTFILTER):
        if flt["handle"] == HANDLE and flt["info"] >> 16 == PRIO:
            return flt
    return None


def delete_slot(rtnl: Rtnl, ifindex: int, hook: int) -> None:
    msg = _slot_msg(ifindex, hook)
    msg["attrs"] = [("TCA_KIND", "bpf")]
    rtnl.request(msg, RTM_DELTFILTER)


def bpf_filter_name(flt) -> str | None:
    """TCA_BPF_NAME of a cls_bpf filter; None for other kinds."""
    options = flt.get_attr("TCA_OPTIONS")
    if flt.get_attr("TCA_KIND") != "bpf" or options is None:
        return None
    raw = nested_attrs(options).get(TCA_BPF_NAME)
    return raw.rstrip(b"\0").decode(errors="replace") if raw is not None else None


def bpf_filter_prog_id(flt) -> int | None:
    """Kernel id of the program a cls_bpf filter runs."""
    options = flt.get_attr("TCA_OPTIONS")
    if flt.get_attr("TCA_KIND") != "bpf" or options is None:
        return None
    raw = nested_attrs(options).get(TCA_BPF_ID)
    return struct.unpack("=I", raw)[0] if raw is not None and len(raw) == 4 else None
