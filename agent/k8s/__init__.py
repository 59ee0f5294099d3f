"""The agent's side of Kubernetes: the API connection, the resources it
reads and the informers that keep a cache of each (docs/kubernetes.md)."""
