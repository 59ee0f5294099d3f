"""datapath.cleanup (what `cilium-cni uninstall` runs): the tc filters and
cgroup hooks of one bpf root's programs come off, its pins go, and the
kernel frees the programs; another root's filter stays."""

import ctypes
import os

import pytest
from bcc import BPF, BPFAttachType, libbcc

from datapath import bpffs, cleanup
from tests import lab
from tests.kernel import tc_filters

pytestmark = pytest.mark.kernel

SOCK_PROG = rb"""
#include <linux/bpf.h>
int sock_connect4(struct bpf_sock_addr *ctx) { return 1; }
"""
BPF_F_ALLOW_MULTI = 2


def test_remove_root_detaches_filters_and_cgroup_hooks_then_unpins(make_datapath, pod, tmp_path):
    dp = make_datapath()
    other = make_datapath(root="/sys/fs/bpf/cilium-cni-test-%s" % lab.unique("o"))
    dp.attach(pod.host_ifindex)
    cgroup = "/sys/fs/cgroup/unified/%s" % lab.unique("ccni-cg-")
    os.mkdir(cgroup)
    sock = BPF(text=SOCK_PROG)
    cg = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fn = sock.load_func(b"sock_connect4", BPF.CGROUP_SOCK_ADDR,
                            attach_type=BPFAttachType.CGROUP_INET4_CONNECT)
        assert libbcc.lib.bpf_prog_attach(fn.fd, cg, BPFAttachType.CGROUP_INET4_CONNECT,
                                          BPF_F_ALLOW_MULTI) == 0, ctypes.get_errno()
        assert libbcc.lib.bpf_obj_pin(fn.fd, ("%s/progs/sock_connect4" % dp.bpf_root)
                                      .encode()) == 0
        ids = cleanup.pinned_prog_ids(dp.bpf_root)
        other_ids = cleanup.pinned_prog_ids(other.bpf_root)
        assert {"from_container", "to_container", "sock_connect4"} <= {
            os.path.basename(p) for p in ids.values()}
        assert "cilium-cni/from_container" in tc_filters(pod.host_ifname, "ingress")
        sock.cleanup()
        dp.close()

        # a missing path and a directory that is no cgroup (tmp_path) are skipped
        detached, unpinned = cleanup.remove_root(dp.bpf_root, [str(tmp_path), cgroup,
                                                               "/no/such/cgroup"])
        assert sorted((a.target, a.hook) for a in detached if a.kind == "tc") == [
            (pod.host_ifname, "egress"), (pod.host_ifname, "ingress")]
        assert [(a.name, a.target) for a in detached if a.kind == "cgroup"] == [
            ("sock_connect4", cgroup)]
        assert "%s/progs/sock_connect4" % dp.bpf_root in unpinned
        assert not os.path.exists(dp.bpf_root)
        assert "cilium-cni/" not in tc_filters(pod.host_ifname, "ingress") + \
            tc_filters(pod.host_ifname, "egress")
        assert lab.still_loaded(ids) == []
        # another root's programs are not ours: nothing of it is touched
        assert cleanup.pinned_prog_ids(other.bpf_root) == other_ids
        assert cleanup.remove_root("/sys/fs/bpf/%s" % lab.unique("ccni-none-")) == ([], [])
    finally:
        os.close(cg)
        sock.cleanup()
        os.rmdir(cgroup)
        other.close()
        bpffs.remove_tree(other.bpf_root)
