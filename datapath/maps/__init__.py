"""The pinned maps, one module per family, each with its byte encodings
(exactly as docs/policy.md and docs/services.md fix them) and its
operations: `endpoints`, `ipcache`, `policy`, `ct`, `metrics`, `lb`.
`fds` lends them the loaded maps' fds under the datapath's lock; `fields`
holds the values several of them share. `loader.Datapath` makes one
object per family (`datapath.policy.update(...)`, ...).
"""
