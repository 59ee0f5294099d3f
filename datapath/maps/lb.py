"""Service maps (`lb_*`, docs/services.md): encodings and updates.

Does: encode services and backends as `bpf/lib/lb.h` reads them, and write
one service at a time in an order that never breaks it (new backend
entries, then the backend slots, then slot 0 with the new count, then the
stale slots), touching no other service's entries; reconcile the pinned
maps with the agent's services after a restart; read the maps back (`bpf
lb list`); switch translation events on and off; expire old translations.
Does not: validate services (agent/services.py does) or attach programs.

Backend ids are one per (family, address, port), shared by the services
that use it, and kept while any service does: a connection tracked to
backend id N keeps going to it while the backend stays, whatever else
changes in its service.
"""

import ipaddress
import struct
import time

from datapath import bpfsys
from datapath.errors import DatapathError
from datapath.maps.ct import CT_KEY
from datapath.maps.fds import MapFamily
from datapath.maps.fields import MAP_ARRAY, MAP_HASH, MAP_LRU_HASH, address, address_bytes

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
CT_KEY_SIZE = CT_KEY.size  # lb_ct's keys are conntrack keys (dir LB_CT_SVC or LB_CT_REV)
LB_CT_SVC, LB_CT_REV = 3, 4
CFG_TRACE = 1
CFG_NODEPORT_ANY = 2  # some NodePort frontend is on the unspecified address


def hostport(family: int, raw: bytes, port: int) -> str:
    addr = address(family, raw)
    return "[%s]:%d" % (addr, port) if family == 6 else "%s:%d" % (addr, port)


def service_key(svc: dict, slot: int = 0) -> bytes:
    fe = svc["frontend"]
    family, raw = address_bytes(fe["address"])
    return LB_KEY.pack(raw, fe["port"].to_bytes(2, "big"), slot, PROTOS[fe["protocol"]], family)


def backend_value(b: dict) -> bytes:
    family, raw = address_bytes(b["address"])
    return LB_BACKEND.pack(raw, b["port"].to_bytes(2, "big"), family)


def slots(svc: dict) -> list[tuple]:
    """Backends repeated by weight: a random slot picks in proportion."""
    out = []
    for b in svc["backends"]:
        out += [(b["address"], b["port"])] * b["weight"]
    return out


class LbMaps(MapFamily):
    SHAPES = {
        "lb_services": (MAP_HASH, LB_KEY.size, LB_VAL.size, 262144, 0),
        "lb_backends": (MAP_HASH, 4, LB_BACKEND.size, 262144, 0),
        "lb_ct": (MAP_LRU_HASH, CT_KEY_SIZE, LB_CT_VAL.size, 131072, 0),
        "lb_sock": (MAP_LRU_HASH, LB_SOCK_KEY_SIZE, LB_SOCK_VAL_SIZE, 131072, 0),
        "lb_config": (MAP_ARRAY, 4, 4, 1, 0),
    }

    def __init__(self, fds):
        super().__init__(fds)
        self._ids = None  # (address, port) -> backend id, built from the map on first use
        self._refs = None  # backend id -> frontend keys using it
        self._addr = None  # backend id -> (address, port)
        self._uses = None  # frontend key -> backend ids it uses
        self._next = 1
        self._any = None  # frontend keys of NodePort services on 0.0.0.0 / ::
        self._flags = 0

    # -- writes ---------------------------------------------------------------

    def upsert(self, svc: dict) -> None:
        """Write one service (normalized, with "id") over its previous state."""
        with self._fds.open() as fds:
            self._index(fds)
            self._write(fds, svc)
            self._wildcards(fds, svc, True)

    def delete(self, svc: dict) -> None:
        with self._fds.open() as fds:
            self._index(fds)
            old = self._count(fds, svc)
            for slot in range(0, old + 1):
                bpfsys.delete(fds["lb_services"], service_key(svc, slot))
            self._release(fds, svc["key"], set())
            self._uses.pop(svc["key"], None)
            self._wildcards(fds, svc, False)

    def sync(self, services: list[dict]) -> None:
        """Make the maps hold exactly `services` (after a restart)."""
        with self._fds.open() as fds:
            self._ids = None
            self._index(fds)
            wanted = set()
            for svc in services:
                self._write(fds, svc)
                wanted.update(service_key(svc, s) for s in range(len(slots(svc)) + 1))
            for key in bpfsys.keys(fds["lb_services"], LB_KEY.size):
                if key not in wanted:
                    bpfsys.delete(fds["lb_services"], key)
            for bid in [b for b, users in self._refs.items() if not users]:
                self._drop_backend(fds, bid)
            self._any, self._flags = set(), -1
            for svc in services:
                self._wildcards(fds, svc, True)
            self._wildcards(fds, None, False)

    def set_trace(self, on: bool) -> None:
        with self._fds.open() as fds:
            keep = self._flags & ~CFG_TRACE if self._flags > 0 else 0
            self._write_flags(fds, keep | (CFG_TRACE if on else 0))

    def ct_gc(self) -> int:
        """Remove expired translations (and reverse entries whose forward one is gone)."""
        with self._fds.open() as fds:
            fd = fds["lb_ct"]
            now = time.monotonic_ns()
            items = dict(bpfsys.items_batch(fd, CT_KEY_SIZE, LB_CT_VAL.size))
            removed = 0
            for key, value in items.items():
                expires, fe_addr, fe_port, _, _, c_addr, c_port, snat_port = LB_CT_VAL.unpack(value)
                if key[38] == LB_CT_SVC:
                    dead = expires <= now and self._ct_expired(fd, key, now)
                else:  # the forward key: the client (before SNAT), the frontend as destination
                    if snat_port == b"\0\0":
                        c_addr, c_port = key[:16], key[32:34]
                    fwd = c_addr + fe_addr + c_port + fe_port + key[36:38] + bytes([LB_CT_SVC]) + key[39:]
                    v = items.get(fwd)
                    # The snapshot is read in chunks while packets create
                    # entries: ask the map itself before removing anything.
                    dead = (v is None or LB_CT_VAL.unpack(v)[0] <= now) and self._ct_expired(fd, fwd, now)
                if dead:
                    removed += bpfsys.delete(fd, key)
            return removed

    # -- reads ----------------------------------------------------------------

    def entries(self) -> list[dict]:
        """The services as the datapath holds them, sorted by frontend."""
        with self._fds.open() as fds:
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

    # -- helpers (the caller holds the lock) -------------------------------------

    def _wildcards(self, fds, svc, present) -> None:
        """Keep lb_config's NODEPORT_ANY bit: only then do the programs look
        at the ipcache for a destination that is no frontend."""
        if self._any is None:
            self._any = set()
        if svc is not None and ipaddress.ip_address(svc["frontend"]["address"]).is_unspecified:
            (self._any.add if present else self._any.discard)(svc["key"])
        self._write_flags(fds, (self._flags & CFG_TRACE if self._flags > 0 else 0)
                          | (CFG_NODEPORT_ANY if self._any else 0))

    def _write_flags(self, fds, flags: int) -> None:
        if flags != self._flags:
            bpfsys.update(fds["lb_config"], b"\0\0\0\0", flags.to_bytes(4, "little"))
            self._flags = flags

    def _index(self, fds) -> None:
        if self._ids is not None:
            return
        self._ids, self._refs, self._addr, self._uses = {}, {}, {}, {}
        fd = fds["lb_backends"]
        for key in bpfsys.keys(fd, 4):
            value = bpfsys.lookup(fd, key, LB_BACKEND.size)
            if value is None:
                continue
            raw, port, family = LB_BACKEND.unpack(value)
            bid = int.from_bytes(key, "little")
            addr = (address(family, raw), int.from_bytes(port, "big"))
            self._ids[addr] = bid
            self._addr[bid] = addr
            self._refs[bid] = set()
        self._next = max(self._refs, default=0) + 1

    def _count(self, fds, svc) -> int:
        value = bpfsys.lookup(fds["lb_services"], service_key(svc, 0), LB_VAL.size)
        return LB_VAL.unpack(value)[1] if value else 0

    def _write(self, fds, svc) -> None:
        try:
            ids = []
            for addr, port in slots(svc):
                bid = self._ids.get((addr, port))
                if bid is None:
                    bid = self._new_id()
                    bpfsys.update(fds["lb_backends"], bid.to_bytes(4, "little"),
                                  backend_value({"address": addr, "port": port}))
                    self._ids[(addr, port)] = bid
                    self._addr[bid] = (addr, port)
                    self._refs[bid] = set()
                self._refs[bid].add(svc["key"])
                ids.append(bid)
            old = self._count(fds, svc)
            for slot, bid in enumerate(ids, 1):
                bpfsys.update(fds["lb_services"], service_key(svc, slot),
                              LB_VAL.pack(bid, 0, svc["id"], TYPES[svc["type"]]))
            bpfsys.update(fds["lb_services"], service_key(svc, 0),
                          LB_VAL.pack(0, len(ids), svc["id"], TYPES[svc["type"]]))
            for slot in range(len(ids) + 1, old + 1):
                bpfsys.delete(fds["lb_services"], service_key(svc, slot))
            self._release(fds, svc["key"], set(ids))
        except bpfsys.BpfError as exc:
            raise DatapathError("failed to write service %s: %s" % (svc["key"], exc.strerror.lower())) \
                from exc

    def _new_id(self) -> int:
        # Ids grow (a removed backend's id is not re-used at once: tracked
        # connections name backends by id); after 2^32 - 1, free ones.
        bid = self._next
        if bid >= 2**32:
            bid = next(i for i in range(1, 2**32) if i not in self._refs)
        self._next = bid + 1
        return bid

    def _release(self, fds, key: str, keep: set) -> None:
        """The service `key` now uses only `keep`: free backends no one uses."""
        for bid in self._uses.get(key, set()) - keep:
            users = self._refs.get(bid)
            if users is None:
                continue
            users.discard(key)
            if not users:
                self._drop_backend(fds, bid)
        self._uses[key] = keep

    def _drop_backend(self, fds, bid: int) -> None:
        bpfsys.delete(fds["lb_backends"], bid.to_bytes(4, "little"))
        self._refs.pop(bid, None)
        self._ids.pop(self._addr.pop(bid, None), None)

    @staticmethod
    def _ct_expired(fd, key, now):
        """True if the live map has no unexpired entry under `key`."""
        v = bpfsys.lookup(fd, key, LB_CT_VAL.size)
        return v is None or LB_CT_VAL.unpack(v)[0] <= now
