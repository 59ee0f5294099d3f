"""The `endpoints` map: host veth ifindex -> endpoint id, identity and the
directions the endpoint's policy enforces (docs/policy.md).

A device without an entry passes everything (counted under endpoint 0).
"""

import struct

from datapath import bpfsys
from datapath.maps.fds import MapFamily
from datapath.maps.fields import MAP_HASH

FLAG_INGRESS_ENFORCED = 1
FLAG_EGRESS_ENFORCED = 2
FLAGS_ALL = FLAG_INGRESS_ENFORCED | FLAG_EGRESS_ENFORCED

ENDPOINT_KEY = struct.Struct("=I")
ENDPOINT_VAL = struct.Struct("=IIII")  # ep_id, identity, flags, pad


class EndpointsMap(MapFamily):
    SHAPES = {"endpoints": (MAP_HASH, ENDPOINT_KEY.size, ENDPOINT_VAL.size, 65536, 0)}

    def set(self, host_ifindex: int, ep_id: int, identity: int = 0, flags: int = 0) -> None:
        """Map the host veth to the endpoint; `flags` says which directions
        are enforced (FLAG_INGRESS_ENFORCED | FLAG_EGRESS_ENFORCED)."""
        if not 0 < ep_id < 2**32:
            raise ValueError(f"invalid endpoint id {ep_id}: 0 is reserved for unknown devices")
        if not 0 <= identity < 2**32:
            raise ValueError(f"invalid identity {identity}")
        if flags & ~FLAGS_ALL or flags < 0:
            raise ValueError(f"invalid endpoint flags {flags:#x}")
        with self._fds.open() as fds:
            bpfsys.update(fds["endpoints"], ENDPOINT_KEY.pack(host_ifindex),
                          ENDPOINT_VAL.pack(ep_id, identity, flags, 0))

    def delete(self, host_ifindex: int, ep_id: int) -> bool:
        """Remove the device's entry while it still names `ep_id` (an
        ifindex re-used by a newer endpoint keeps its entry); False if it
        did not."""
        key = ENDPOINT_KEY.pack(host_ifindex)
        with self._fds.open() as fds:
            value = bpfsys.lookup(fds["endpoints"], key, ENDPOINT_VAL.size)
            if value is None or ENDPOINT_VAL.unpack(value)[0] != ep_id:
                return False
            return bpfsys.delete(fds["endpoints"], key)

    def entries(self) -> dict[int, int]:
        """Host ifindex -> endpoint id, as the datapath sees it."""
        return {ifindex: value[0] for ifindex, value in self.infos().items()}

    def infos(self) -> dict[int, tuple[int, int, int]]:
        """Host ifindex -> (endpoint id, identity, flags)."""
        with self._fds.open() as fds:
            items = bpfsys.items_batch(fds["endpoints"], ENDPOINT_KEY.size, ENDPOINT_VAL.size)
        return {ENDPOINT_KEY.unpack(k)[0]: ENDPOINT_VAL.unpack(v)[:3] for k, v in items}
