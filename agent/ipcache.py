"""Who claims each ipcache prefix; the datapath holds the strongest claim.

Several sources can name the same prefix: an endpoint its own address, the
host its addresses, policy a CIDR (`fromCIDR: [10.1.2.10/32]` may name a
pod). The pod's or the host's identity must win over a CIDR identity for
the same prefix, whatever the order of the writes, and come back when the
CIDR claim goes. In a cluster, other nodes' pods (from etcd) come between
the host and CIDRs: this node's own claims always win. Priority: endpoint >
host > remote endpoint > CIDR.
"""

ENDPOINT, HOST, REMOTE, CIDR = 4, 3, 2, 1


class IpCache:
    def __init__(self, ipcache_map):
        self._map = ipcache_map  # the datapath's ipcache family (`datapath.ipcache`)
        self._claims = {}   # prefix -> {owner: (priority, identity)}
        self._written = {}  # prefix -> (identity, remote) in the datapath

    def claim(self, prefix, owner, priority, identity):
        self._claims.setdefault(prefix, {})[owner] = (priority, identity)
        self._sync(prefix)

    def release(self, prefix, owner):
        claims = self._claims.get(prefix)
        if claims is None or claims.pop(owner, None) is None:
            return
        if not claims:
            del self._claims[prefix]
        self._sync(prefix)

    def resync(self, prefix):
        """Write the strongest claim of `prefix` again (after a failed write)."""
        self._sync(prefix)

    def _sync(self, prefix):
        claims = self._claims.get(prefix)
        want = None
        if claims:
            priority, identity = max(claims.values())
            want = (identity, priority == REMOTE)
        have = self._written.get(prefix)
        if want == have:
            return
        if want is None:
            self._map.delete(prefix)
            del self._written[prefix]
        else:
            self._map.set(prefix, *want)
            self._written[prefix] = want

    def reconcile(self):
        """After a restart: drop pinned entries nobody claims any more.

        (An endpoint whose pod vanished while the agent was down, a CIDR
        no longer in policy.) Entries with the wrong identity are rewritten.
        """
        removed = 0
        for prefix, identity in self._map.entries().items():
            want = self._written.get(prefix)
            if want is None:
                self._map.delete(prefix)
                removed += 1
            elif want[0] != identity:
                self._map.set(prefix, *want)
        return removed
