"""Identity-based network policy (docs/policy.md), pure Python.

- `parse`: CiliumNetworkPolicy YAML/JSON → `rule.Rule` objects, or `PolicyError`.
- `selector`: label, entity and CIDR selectors.
- `selectorcache`: selector → identities, updated incrementally.
- `repository`: the rules in force, resolved per endpoint label set.
- `endpoint`: one endpoint's entries, written as deltas through a callback.
- `verdict`: the datapath's decision over entries, and a reference from rules.

No kernel access here: the datapath writes what `EndpointPolicy` hands it.
"""
