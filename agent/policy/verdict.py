"""Verdicts: from policy entries (as the datapath decides) and from rules.

`verdict()` is the three-step decision of docs/policy.md over an entry set,
the same the datapath's C code makes per new connection. `reference_verdict()`
decides from the parsed rules directly, without entries, blocks or caches,
so that property tests can compare the two. Neither touches the datapath.
"""

import ipaddress

from agent import labels as L
from agent.policy.ports import block_matches
from agent.policy.selector import CIDRSelector

ALLOW = "allow"
POLICY_DENY = "policy-deny"  # a deny rule matched (drop reason 2)
POLICY_DENIED = "policy-denied"  # enforced, nothing allowed it (drop reason 1)


def entry_matches(entry, remote_identity, proto, dport):
    _, ident, e_proto, port, plen, _ = entry
    if ident != 0 and ident != remote_identity:
        return False
    if e_proto == 0:
        return True
    return e_proto == proto and block_matches(port, plen, dport)


def verdict(entries, enforced, direction, remote_identity, proto, dport):
    """ALLOW, POLICY_DENY or POLICY_DENIED for a new connection."""
    allowed = False
    for entry in entries:
        if entry[0] == direction and entry_matches(entry, remote_identity, proto, dport):
            if entry[5]:
                return POLICY_DENY
            allowed = True
    if allowed:
        return ALLOW
    return POLICY_DENIED if enforced[direction] else ALLOW


def reference_verdict(rules, local_labels, remote_id, remote_labels, direction, proto, dport,
                      cidr_of_remote=None):
    """The verdict evaluated from `rules` directly.

    `cidr_of_remote`: the remote's address (or prefix) when it lies outside
    the cluster; CIDR peers are then judged by containment of that address
    instead of by the remote's CIDR identity labels. Leave it None for
    endpoints (CIDR rules never select them).
    """
    remote_net = ipaddress.ip_network(cidr_of_remote, strict=False) if cidr_of_remote is not None else None

    def peer_matches(sel):
        if sel.wildcard:
            return True
        if isinstance(sel, CIDRSelector):
            if remote_id == L.ID_WORLD and sel.prefix.prefixlen == 0:
                return True
            if remote_net is not None:
                return sel.contains(remote_net)
        return sel.matches(remote_id, remote_labels)

    enforced, allowed = False, False
    for rule in rules:
        if not rule.endpoint_selector.matches(None, local_labels):
            continue
        enforced = enforced or rule.enforces(direction)
        for item in rule.items:
            if item.direction != direction or not item.port_matches(proto, dport):
                continue
            if any(peer_matches(p) for p in item.peers):
                if item.deny:
                    return POLICY_DENY
                allowed = True
    if allowed:
        return ALLOW
    return POLICY_DENIED if enforced else ALLOW
