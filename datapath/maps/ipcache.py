"""The `ipcache` map (LPM trie): address prefix -> identity; a miss is world.

Keys: prefixlen (32 + the address prefix), family, pad, address
(docs/policy.md). Shared with sock.c, which reads it for NodePort.
"""

import ipaddress
import struct

from datapath import bpfsys
from datapath.errors import DatapathError
from datapath.maps.fds import MapFamily
from datapath.maps.fields import MAP_LPM_TRIE, NO_PREALLOC

IPCACHE_KEY = struct.Struct("=IB3x16s")  # prefixlen, family, pad, addr
IPCACHE_VAL = struct.Struct("=II")  # identity, flags
REMOTE = 1  # flags: a pod of another node (NodePort traffic to it is SNAT'd)


def ipcache_key(cidr: str) -> bytes:
    """Key of a CIDR ("10.0.0.0/8") or a single address ("10.0.0.1")."""
    try:
        net = ipaddress.ip_network(cidr, strict=True)
    except ValueError as exc:
        raise ValueError(f"invalid CIDR '{cidr}': {exc}") from None
    return IPCACHE_KEY.pack(32 + net.prefixlen, net.version, net.network_address.packed.ljust(16, b"\0"))


def ipcache_cidr(key: bytes) -> str:
    prefixlen, family, addr = IPCACHE_KEY.unpack(key)
    raw = addr[:4] if family == 4 else addr
    return str(ipaddress.ip_network((raw, prefixlen - 32)))


class IpcacheMap(MapFamily):
    SHAPES = {"ipcache": (MAP_LPM_TRIE, IPCACHE_KEY.size, IPCACHE_VAL.size, 65536, NO_PREALLOC)}

    def set(self, cidr: str, identity: int, remote: bool = False) -> None:
        """Traffic from/to `cidr` (longest prefix wins) has `identity`;
        `remote`: it is a pod of another node of the cluster."""
        if not 0 <= identity < 2**32:
            raise ValueError(f"invalid identity {identity}")
        key = ipcache_key(cidr)
        with self._fds.open() as fds:
            try:
                bpfsys.update(fds["ipcache"], key, IPCACHE_VAL.pack(identity, REMOTE if remote else 0))
            except bpfsys.BpfError as exc:
                raise DatapathError(f"failed to set ipcache entry {cidr}: {exc.strerror.lower()}") from exc

    def delete(self, cidr: str) -> bool:
        """Remove the entry of exactly `cidr`; False if there was none."""
        key = ipcache_key(cidr)
        with self._fds.open() as fds:
            return bpfsys.delete(fds["ipcache"], key)

    def entries(self) -> dict[str, int]:
        out = {}
        with self._fds.open() as fds:
            fd = fds["ipcache"]
            for key in bpfsys.keys(fd, IPCACHE_KEY.size):
                value = bpfsys.lookup(fd, key, IPCACHE_VAL.size)
                if value is not None:
                    out[ipcache_cidr(key)] = IPCACHE_VAL.unpack(value)[0]
        return out
