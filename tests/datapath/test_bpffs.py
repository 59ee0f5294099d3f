"""bpffs detection, mounting and tree removal on the real filesystem."""

import os
import random

import pytest
from bcc import BPF, libbcc

from datapath import bpffs
from tests import lab

pytestmark = pytest.mark.kernel


def test_is_bpffs(tmp_path, require_root):
    assert bpffs.is_bpffs("/sys/fs/bpf")
    assert not bpffs.is_bpffs(str(tmp_path))
    assert not bpffs.is_bpffs(str(tmp_path / "missing"))


def test_ensure_mounted_is_a_no_op_when_mounted(require_root):
    assert bpffs.ensure_mounted("/sys/fs/bpf") is False


def test_ensure_mounted_mounts(tmp_path, require_root):
    mountpoint = str(tmp_path / "bpf")
    try:
        assert bpffs.ensure_mounted(mountpoint) is True
        assert bpffs.is_bpffs(mountpoint)
        assert bpffs.ensure_mounted(mountpoint) is False
    finally:
        lab.sh("umount", mountpoint, check=False)
    assert not bpffs.is_bpffs(mountpoint)


def test_remove_tree_unpins_everything(require_root):
    root = "/sys/fs/bpf/cilium-cni-test-%08x" % random.getrandbits(32)
    try:
        os.makedirs(f"{root}/a/b")
        bpf = BPF(text=b"int prog(struct __sk_buff *skb) { return 0; }")
        try:
            fd = bpf.load_func(b"prog", BPF.SCHED_CLS).fd
            for path in (f"{root}/top", f"{root}/a/mid", f"{root}/a/b/deep"):
                assert libbcc.lib.bpf_obj_pin(fd, path.encode()) == 0
        finally:
            bpf.cleanup()
        bpffs.remove_tree(root)
        assert not os.path.exists(root)
        bpffs.remove_tree(root)  # already gone: fine
    finally:
        if os.path.exists(root):
            lab.sh("rm", "-rf", root)


def test_remove_tree_refuses_other_filesystems(tmp_path, require_root):
    keep = tmp_path / "keep"
    keep.write_text("x")
    with pytest.raises(ValueError, match="not on a bpf filesystem"):
        bpffs.remove_tree(str(tmp_path))
    assert keep.read_text() == "x"
