"""Service maps: byte encodings (docs/services.md) and their updates.

Does: encode services and backends as `bpf/lb.h` reads them, and write one
service at a time in an order that never breaks it (new backend entries,
then the backend slots, then slot 0 with the new count, then the stale
slots), touching no other service's entries; reconcile the pinned maps
with the agent's services after a restart; read the maps back (`bpf lb
list`); switch translation events on and off; expire old translations.
`LbTables` is a mixin of `loader.Datapath` (its lock and loaded maps).
Does not: validate services (agent/services.py does) or attach programs.

Backend ids are one per (family, address, port), shared by the services
that use it, and kept while any service does: a connection tracked to
backend id N keeps going to it while the backend stays, whatever else
changes in its service.
"""

import ipaddress
import socket
import struct
import time

from datapath import bpfsys
from datapath.errors import DatapathError

PROTOS = {"tcp": 6, "udp": 17}
PROTO_NAMES = {v: k for k, v in PROTOS.items()}
TYPES = {"ClusterIP": 1, "NodePort": 2, "HostPort": 3}
TYPE_NAMES = {v: k for k, v in TYPES.items()}

LB_KEY = struct.Struct("=16s2sHBB2x")  # addr, port (network order), slot, proto, family
LB_VAL = struct.Struct("=IHHB3x")  # backend_id, count, svc_id, type
LB_BACKEND = struct.Struct("=16s2sBx")  # addr, port (network order), family
# expires, frontend addr, port, svc_id, backend_id, client addr, port, SNAT port, pad
LB_CT_VAL = struct.Struct("=Q16s2sHI16s2s2s4x")
LB_SOCK_KEY_SIZE = 32
LB_SOCK_VAL_SIZE = 24
CT_KEY_SIZE = 44
LB_CT_SVC, LB_CT_REV = 3, 4
CFG_TRACE = 1
CFG_NODEPORT_ANY = 2  # some NodePort frontend is on the unspecified address

MAP_SHAPES = {
    # name: (map_type, key_size, value_size, max_entries, flags), as in loader
    "lb_services": (1, LB_KEY.size, LB_VAL.size, 262144, 0),
    "lb_backends": (1, 4, LB_BACKEND.size, 262144, 0),
    "lb_ct": (9, CT_KEY_SIZE, LB_CT_VAL.size, 131072, 0),
    "lb_sock": (9, LB_SOCK_KEY_SIZE, LB_SOCK_VAL_SIZE, 131072, 0),
    "lb_config": (2, 4, 4, 1, 0),
}


def _addr(address: str) -> tuple[int, bytes]:
    ip = ipaddress.ip_address(address)
    return ip.version, ip.packed.ljust(16, b"\0")


def _text(family: int, raw: bytes) -> str:
    if family == 4:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    return socket.inet_ntop(socket.AF_INET6, raw)


def hostport(family: int, raw: bytes, port: int) -> str:
    addr = _text(family, raw)
    return "[%s]:%d" % (addr, port) if family == 6 else "%s:%d" % (addr, port)


def service_key(svc: dict, slot: int = 0) -> bytes:
    fe = svc["frontend"]
    family, raw = _addr(fe["address"])
    return LB_KEY.pack(raw, fe["port"].to_bytes(2, "big"), slot, PROTOS[fe["protocol"]], family)


def backend_value(b: dict) -> bytes:
    family, raw = _addr(b["address"])
    return LB_BACKEND.pack(raw, b["port"].to_bytes(2, "big"), family)


def slots(svc: dict) -> list[tuple]:
    """Backends repeated by weight: a random slot picks in proportion."""
    out = []
    for b in svc["backends"]:
        out += [(b["address"], b["port"])] * b["weight"]
    return out


class LbTables:
    _lb_ids = None  # (address, port) -> backend id, built from the map on first use
    _lb_refs = None  # backend id -> frontend keys using it
    _lb_addr = None  # backend id -> (address, port)
    _lb_uses = None  # frontend key -> backend ids it uses
    _lb_next = 1
    _lb_any = None  # frontend keys of NodePort services on 0.0.0.0 / ::
    _lb_flags = 0

    # -- writes ---------------------------------------------------------------

    def lb_upsert(self, svc: dict) -> None:
        """Write one service (normalized, with "id") over its previous state."""
        with self._lock:
            fds = self._require_loaded().map_fds
            self._lb_index(fds)
            self._lb_write(fds, svc)
            self._lb_wildcards(fds, svc, True)

    def lb_delete(self, svc: dict) -> None:
        with self._lock:
            fds = self._require_loaded().map_fds
            self._lb_index(fds)
            old = self._lb_count(fds, svc)
            for slot in range(0, old + 1):
                bpfsys.delete(fds["lb_services"], service_key(svc, slot))
            self._lb_release(fds, svc["key"], set())
            self._lb_uses.pop(svc["key"], None)
            self._lb_wildcards(fds, svc, False)

    def lb_sync(self, services: list[dict]) -> None:
        """Make the maps hold exactly `services` (after a restart)."""
        with self._lock:
            fds = self._require_loaded().map_fds
            self._lb_ids = None
            self._lb_index(fds)
            wanted = set()
            for svc in services:
                self._lb_write(fds, svc)
                wanted.update(service_key(svc, s) for s in range(len(slots(svc)) + 1))
            for key in bpfsys.keys(fds["lb_services"], LB_KEY.size):
                if key not in wanted:
                    bpfsys.delete(fds["lb_services"], key)
            for bid in [b for b, users in self._lb_refs.items() if not users]:
                self._lb_drop_backend(fds, bid)
            self._lb_any, self._lb_flags = set(), -1
            for svc in services:
                self._lb_wildcards(fds, svc, True)
            self._lb_wildcards(fds, None, False)

    def _lb_wildcards(self, fds, svc, present) -> None:
        """Keep lb_config's NODEPORT_ANY bit: only then do the programs look
        at the ipcache for a destination that is no frontend."""
        if self._lb_any is None:
            self._lb_any = set()
        if svc is not None and ipaddress.ip_address(svc["frontend"]["address"]).is_unspecified:
            (self._lb_any.add if present else self._lb_any.discard)(svc["key"])
        self._lb_write_flags(fds, (self._lb_flags & CFG_TRACE if self._lb_flags > 0 else 0)
                             | (CFG_NODEPORT_ANY if self._lb_any else 0))

    def _lb_write_flags(self, fds, flags: int) -> None:
        if flags != self._lb_flags:
            bpfsys.update(fds["lb_config"], b"\0\0\0\0", flags.to_bytes(4, "little"))
            self._lb_flags = flags

    def _lb_index(self, fds) -> None:
        if self._lb_ids is not None:
            return
        self._lb_ids, self._lb_refs, self._lb_addr, self._lb_uses = {}, {}, {}, {}
        fd = fds["lb_backends"]
        for key in bpfsys.keys(fd, 4):
            value = bpfsys.lookup(fd, key, LB_BACKEND.size)
            if value is None:
                continue
            raw, port, family = LB_BACKEND.unpack(value)
            bid = int.from_bytes(key, "little")
            addr = (_text(family, raw), int.from_bytes(port, "big"))
            self._lb_ids[addr] = bid
            self._lb_addr[bid] = addr
            self._lb_refs[bid] = set()
        self._lb_next = max(self._lb_refs, default=0) + 1

    def _lb_count(self, fds, svc) -> int:
        value = bpfsys.lookup(fds["lb_services"], service_key(svc, 0), LB_VAL.size)
        return LB_VAL.unpack(value)[1] if value else 0

    def _lb_write(self, fds, svc) -> None:
        try:
            ids = []
            for address, port in slots(svc):
                bid = self._lb_ids.get((address, port))
                if bid is None:
                    bid = self._lb_new_id()
                    bpfsys.update(fds["lb_backends"], bid.to_bytes(4, "little"),
                                  backend_value({"address": address, "port": port}))
                    self._lb_ids[(address, port)] = bid
                    self._lb_addr[bid] = (address, port)
                    self._lb_refs[bid] = set()
                self._lb_refs[bid].add(svc["key"])
                ids.append(bid)
            old = self._lb_count(fds, svc)
            for slot, bid in enumerate(ids, 1):
                bpfsys.update(fds["lb_services"], service_key(svc, slot),
                              LB_VAL.pack(bid, 0, svc["id"], TYPES[svc["type"]]))
            bpfsys.update(fds["lb_services"], service_key(svc, 0),
                          LB_VAL.pack(0, len(ids), svc["id"], TYPES[svc["type"]]))
            for slot in range(len(ids) + 1, old + 1):
                bpfsys.delete(fds["lb_services"], service_key(svc, slot))
            self._lb_release(fds, svc["key"], set(ids))
        except bpfsys.BpfError as exc:
            raise DatapathError("failed to write service %s: %s" % (svc["key"], exc.strerror.lower())) \
                from exc

    def _lb_new_id(self) -> int:
        # Ids grow (a removed backend's id is not re-used at once: tracked
        # connections name backends by id); after 2^32 - 1, free ones.
        bid = self._lb_next
        if bid >= 2**32:
            bid = next(i for i in range(1, 2**32) if i not in self._lb_refs)
        self._lb_next = bid + 1
        return bid

    def _lb_release(self, fds, key: str, keep: set) -> None:
        """The service `key` now uses only `keep`: free backends no one uses."""
        for bid in self._lb_uses.get(key, set()) - keep:
            users = self._lb_refs.get(bid)
            if users is None:
                continue
            users.discard(key)
            if not users:
                self._lb_drop_backend(fds, bid)
        self._lb_uses[key] = keep

    def _lb_drop_backend(self, fds, bid: int) -> None:
        bpfsys.delete(fds["lb_backends"], bid.to_bytes(4, "little"))
        self._lb_refs.pop(bid, None)
        self._lb_ids.pop(self._lb_addr.pop(bid, None), None)

    def lb_set_trace(self, on: bool) -> None:
        with self._lock:
            fds = self._require_loaded().map_fds
            keep = self._lb_flags & ~CFG_TRACE if self._lb_flags > 0 else 0
            self._lb_write_flags(fds, keep | (CFG_TRACE if on else 0))

    def lb_ct_gc(self) -> int:
        """Remove expired translations (and reverse entries whose forward one is gone)."""
        with self._lock:
            fd = self._require_loaded().map_fds["lb_ct"]
            now = time.monotonic_ns()
            items = dict(bpfsys.items_batch(fd, CT_KEY_SIZE, LB_CT_VAL.size))
            removed = 0
            for key, value in items.items():
                expires, fe_addr, fe_port, _, _, c_addr, c_port, snat_port = LB_CT_VAL.unpack(value)
                if key[38] == LB_CT_SVC:
                    dead = expires <= now and self._lb_ct_expired(fd, key, now)
                else:  # the forward key: the client (before SNAT), the frontend as destination
                    if snat_port == b"\0\0":
                        c_addr, c_port = key[:16], key[32:34]
                    fwd = c_addr + fe_addr + c_port + fe_port + key[36:38] + bytes([LB_CT_SVC]) + key[39:]
                    v = items.get(fwd)
                    # The snapshot is read in chunks while packets create
                    # entries: ask the map itself before removing anything.
                    dead = (v is None or LB_CT_VAL.unpack(v)[0] <= now) and \
                        self._lb_ct_expired(fd, fwd, now)
                if dead:
                    removed += bpfsys.delete(fd, key)
            return removed

    @staticmethod
    def _lb_ct_expired(fd, key, now):
        """True if the live map has no unexpired entry under `key`."""
        v = bpfsys.lookup(fd, key, LB_CT_VAL.size)
        return v is None or LB_CT_VAL.unpack(v)[0] <= now

    # -- reads ----------------------------------------------------------------

    def lb_entries(self) -> list[dict]:
        """The services as the datapath holds them, sorted by frontend."""
        with self._lock:
            fds = self._require_loaded().map_fds
            backends = {}
            for key, value in bpfsys.items_batch(fds["lb_backends"], 4, LB_BACKEND.size):
                raw, port, family = LB_BACKEND.unpack(value)
                backends[int.from_bytes(key, "little")] = hostport(family, raw, int.from_bytes(port, "big"))
            entries = bpfsys.items_batch(fds["lb_services"], LB_KEY.size, LB_VAL.size)
        services, slot_map = {}, {}
        for key, value in entries:
            raw, port, slot, proto, family = LB_KEY.unpack(key)
            bid, count, svc_id, kind = LB_VAL.unpack(value)
            fe = "%s/%s" % (hostport(family, raw, int.from_bytes(port, "big")), PROTO_NAMES.get(proto, proto))
            if slot == 0:
                services[fe] = {"frontend": fe, "id": svc_id, "type": TYPE_NAMES.get(kind, str(kind)),
                                "slots": count}
            else:
                slot_map.setdefault(fe, {})[slot] = backends.get(bid, "missing backend %d" % bid)
        out = []
        for fe, svc in sorted(services.items()):
            got = slot_map.get(fe, {})
            svc["backends"] = [got.get(s, "missing slot %d" % s) for s in range(1, svc["slots"] + 1)]
            out.append(svc)
        return out
