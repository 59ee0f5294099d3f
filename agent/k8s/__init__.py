"""The agent's Kubernetes side: what it reads from the API server and how
(docs/kubernetes.md).

- `resources`: the resources the agent reads and their API paths;
- `client`: one connection to the API server (lightkube for kubeconfig,
  in-cluster credentials and TLS), list and watch;
- `informer`: a cache per resource kept by list + watch, with bookmarks,
  resume, re-list with a difference on 410 Gone, back-off;
- `netpol`: a `networking.k8s.io/v1` NetworkPolicy object → the equivalent
  CiliumNetworkPolicy and, through the one policy parser, `Rule` objects;
  a policy the agent cannot enforce is refused whole (`NetworkPolicyError`).

Nothing here is on the plugin's path.
"""
