"""The agent's Kubernetes side: what it reads from the API server and how.

- `netpol`: a `networking.k8s.io/v1` NetworkPolicy object → the equivalent
  CiliumNetworkPolicy and, through the one policy parser, `Rule` objects;
  a policy the agent cannot enforce is refused whole (`NetworkPolicyError`).

Nothing here is on the plugin's path.
"""
