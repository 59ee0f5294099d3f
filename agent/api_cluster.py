"""The cluster routes: the nodes, and a read-only look at etcd.

  GET /v1/nodes                       -> [node, ...] (this one included, `self`)
  GET /v1/kvstore?prefix=P[&limit=N]  -> the keys under the cluster's prefix + P
  GET /v1/kvstore?key=K               -> one key

Both answer only on an agent with `kvstore: etcd` (agent.kvstore.cluster);
on one without, 404 with an error naming that setting: an empty node list
would read as "a cluster without even this node", which is false.

Keys and prefixes are relative to the configured `kvstore-prefix`, or
absolute when they start with it; nothing outside it can be read. etcd is
asked directly from the API's thread (agent.kvstore.etcd is thread-safe),
never on the worker: a slow etcd must not hold up pods' ADDs. These are
debugging aids: they never write.
"""

from agent.errors import BadRequest, KvstoreUnavailable, NotFound, RouteNotFound

DEFAULT_LIMIT = 100
MAX_LIMIT = 10000
LIST_VALUE_BYTES = 1024  # a listing shows the head of each value; `key=` shows all


def list_nodes(api, req):
    cluster = _cluster(api, req)
    return 200, api.worker.submit(cluster.node_list)


def get_kvstore(api, req):
    from agent.kvstore.etcd import KvstoreError  # aetcd, grpc: only on a clustered agent
    cluster = _cluster(api, req)
    query = req.query
    if "key" in query and "prefix" in query:
        raise BadRequest("kvstore: give ?key=KEY or ?prefix=PREFIX, not both")
    root = cluster.keys.root
    try:
        if "key" in query:
            if not query["key"].strip("/"):
                raise BadRequest("kvstore: ?key= is empty; name a key (relative to %s)" % root)
            key = absolute(root, query["key"])
            item = cluster.etcd.get(key)
            if item is None:
                raise NotFound("no key '%s' in etcd" % key)
            return 200, render(item, None)
        limit = _limit(query.get("limit"))
        prefix = absolute(root, query.get("prefix", ""))
        revision, items, count = cluster.etcd.range(prefix, limit)
    except KvstoreError as exc:
        raise KvstoreUnavailable(str(exc)) from None
    return 200, {"prefix": prefix, "revision": revision, "count": count,
                 "truncated": count > len(items),
                 "items": [render(item, LIST_VALUE_BYTES) for item in items[:limit]]}


def _cluster(api, req):
    cluster = getattr(api, "cluster", None)
    if cluster is None:
        raise RouteNotFound("this node is not in a cluster: its agent runs without a kvstore "
                            "(%s %s needs `kvstore: etcd` and kvstore-endpoints in the agent "
                            "config)" % (req.method, req.path))
    return cluster


def _limit(text):
    if text is None:
        return DEFAULT_LIMIT
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise BadRequest("kvstore: limit must be a number from 1 to %d, not %r"
                         % (MAX_LIMIT, text))
    return int(text)


def absolute(root, text):
    """A key or prefix as given -> the key in etcd: `root` (ends in '/') +
    text, unless text already starts with the root (with or without its
    trailing '/')."""
    text = text.lstrip("/")
    if text == root.rstrip("/") or text.startswith(root):
        return root + text[len(root):]
    return root + text


def escaped(raw):
    """Bytes that are not UTF-8 text as printable ASCII: backslash and
    anything outside ' '..'~' as \\xNN, so the form reads back unambiguously."""
    return "".join(chr(b) if 0x20 <= b < 0x7F and b != 0x5C else "\\x%02x" % b for b in raw)


def render(item, limit):
    """An etcd Item as the API shows it; the value cut to `limit` bytes
    (None: whole) as text, or escaped when it is not UTF-8."""
    raw = item.value if limit is None else item.value[:limit]
    try:
        value, encoding = raw.decode("utf-8"), "text"
    except UnicodeDecodeError as exc:
        if exc.start >= len(raw) - 3 and len(raw) < len(item.value):
            # cut inside a character: the text up to there is still text
            value, encoding = raw[:exc.start].decode("utf-8"), "text"
        else:
            value, encoding = escaped(raw), "escaped"
    return {"key": item.key, "value": value, "encoding": encoding, "size": len(item.value),
            "truncated": len(raw) < len(item.value), "createRevision": item.create_revision,
            "modRevision": item.mod_revision, "lease": "%x" % item.lease if item.lease else None}


HANDLERS = {fn.__name__: fn for fn in (list_nodes, get_kvstore)}
