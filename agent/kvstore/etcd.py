"""A synchronous etcd v3 client for the agent's threads, over aetcd.

aetcd (asyncio, gRPC) was measured against etcd-server 3.4 on this kind of
machine (docs/kvstore.md): puts, transactions, leases and watches work and
it reconnects at once after a member restarts. The agent is threaded, so
this module runs aetcd on an event loop of its own (thread "kvstore") and
gives the rest of the agent blocking calls with a deadline, plus:

- every endpoint of the cluster in one gRPC channel (`ipv4:a:p,b:p`), so a
  member going away moves the connection to another (aetcd takes one
  host:port);
- TLS with a client certificate (aetcd has no option for it);
- `hasleader` metadata on every call: a member cut off from its quorum
  answers "no leader" at once instead of letting calls hang;
- watches that resume after a lost connection from the last revision they
  delivered, and report a compacted start revision so the owner re-lists;
- a lease kept alive by a task on the loop;
- the health the operator sees: endpoints, leader, latency, last error.

Nothing here is on the plugin's path.
"""

import asyncio
import ipaddress
import queue
import random
import socket
import threading
import time
import urllib.parse
from collections import namedtuple

import aetcd
import grpc
from aetcd import exceptions as etcd_errors
from aetcd import rpc, utils, watcher

Item = namedtuple("Item", "key value create_revision mod_revision lease")
Event = namedtuple("Event", "kind key value create_revision mod_revision")  # kind: put|delete
# A watch hands its owner these, in order: events, or COMPACTED (re-list),
# or SYNCED (caught up after a resume: a place to note health).
COMPACTED = "compacted"

MAX_MESSAGE = 256 * 1024 * 1024  # a list of 50,000 endpoints is ~10 MB; gRPC's default is 4


class KvstoreError(Exception):
    """etcd cannot be reached or refused the call; the message names the cause."""


class ConfigError(KvstoreError):
    """The endpoints or TLS settings are wrong: nothing to retry."""


def parse_endpoints(urls):
    """['http://10.0.0.1:2379', ...] -> (gRPC target, tls wanted).

    Host names are resolved once here: gRPC's address list takes literals.
    """
    if not urls:
        raise ConfigError("kvstore-endpoints is empty: name at least one etcd client URL "
                          "(http://IP:2379 or https://...)")
    schemes, addresses = set(), []
    for url in urls:
        parts = urllib.parse.urlsplit(url if "://" in url else "http://" + url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError("kvstore endpoint %r: want http://HOST:PORT or https://HOST:PORT"
                              % url)
        try:
            port = parts.port or 2379
        except ValueError:
            raise ConfigError("kvstore endpoint %r: invalid port" % url) from None
        schemes.add(parts.scheme)
        try:
            ips = [ipaddress.ip_address(parts.hostname)]
        except ValueError:
            try:
                infos = socket.getaddrinfo(parts.hostname, port, proto=socket.IPPROTO_TCP)
            except OSError as exc:
                raise ConfigError("kvstore endpoint %r: cannot resolve %s: %s"
                                  % (url, parts.hostname, exc)) from None
            ips = [ipaddress.ip_address(info[4][0]) for info in infos]
        for ip in ips:
            if (ip, port) not in addresses:
                addresses.append((ip, port))
    if len(schemes) > 1:
        raise ConfigError("kvstore-endpoints mix http and https: %s" % ", ".join(urls))
    families = {ip.version for ip, _ in addresses}
    if len(families) > 1:
        raise ConfigError("kvstore-endpoints mix IPv4 and IPv6 addresses; use one family")
    if families == {6}:
        target = "ipv6:" + ",".join("[%s]:%d" % a for a in addresses)
    else:
        target = "ipv4:" + ",".join("%s:%d" % a for a in addresses)
    return target, schemes == {"https"}


def _read(path, what):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ConfigError("kvstore %s %s: %s" % (what, path, exc.strerror)) from None


class _Client(aetcd.Client):
    """aetcd's client on a channel we build: all endpoints, TLS, hasleader."""

    def __init__(self, target, credentials, timeout):
        super().__init__(timeout=timeout)
        self._target = target
        self._credentials = credentials

    async def connect(self):
        if self._connected.is_set():
            return
        options = [("grpc.max_receive_message_length", MAX_MESSAGE),
                   ("grpc.max_send_message_length", MAX_MESSAGE),
                   ("grpc.keepalive_time_ms", 10000),
                   ("grpc.keepalive_timeout_ms", 5000),
                   ("grpc.keepalive_permit_without_calls", 1),
                   ("grpc.initial_reconnect_backoff_ms", 200),
                   ("grpc.max_reconnect_backoff_ms", 2000)]
        if self._credentials is not None:
            self.channel = grpc.aio.secure_channel(self._target, self._credentials, options)
        else:
            self.channel = grpc.aio.insecure_channel(self._target, options)
        # A member without a leader refuses at once ("no leader") instead of
        # holding calls and watches until their deadline.
        self.metadata = (("hasleader", "true"),)
        self.kvstub = rpc.KVStub(self.channel)
        self.clusterstub = rpc.ClusterStub(self.channel)
        self.leasestub = rpc.LeaseStub(self.channel)
        self.maintenancestub = rpc.MaintenanceStub(self.channel)
        self._watcher = watcher.Watcher(rpc.WatchStub(self.channel), timeout=self._timeout,
                                        metadata=self.metadata)
        self._connected.set()


def _describe(exc):
    """One line for an operator from an aetcd/gRPC error."""
    cause = exc.__cause__ if isinstance(exc.__cause__, grpc.aio.AioRpcError) else None
    if cause is not None:
        details = cause.details() or cause.code().name
        return "%s (%s)" % (details, cause.code().name)
    if isinstance(exc, asyncio.TimeoutError):
        return "no answer in time"
    return str(exc) or type(exc).__name__


class Etcd:
    """Blocking calls on an aetcd client running on its own loop thread."""

    def __init__(self, endpoints, ca_file="", cert_file="", key_file="", timeout=2.0,
                 log=None):
        self.endpoints = list(endpoints)
        target, tls = parse_endpoints(self.endpoints)
        credentials = None
        if tls or ca_file or cert_file or key_file:
            if bool(cert_file) != bool(key_file):
                raise ConfigError("kvstore TLS: give both kvstore-cert-file and "
                                  "kvstore-key-file, or neither")
            if not tls:
                raise ConfigError("kvstore TLS files are set but the endpoints are http://; "
                                  "use https:// endpoints")
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(ca_file, "CA file") if ca_file else None,
                private_key=_read(key_file, "key file") if key_file else None,
                certificate_chain=_read(cert_file, "certificate file") if cert_file else None)
        self.timeout = timeout
        self._tls = credentials is not None
        self._log = log
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kvstore",
                                        daemon=True)
        self._thread.start()
        self._client = _Client(target, credentials, timeout)
        self._health_lock = threading.Lock()
        self._last_error = None
        self._last_error_at = None
        self._latency = None
        self._closed = False

    # --- plumbing ---

    def _run(self, coro, timeout=None):
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            result = future.result((timeout or self.timeout) + 1.0)
        except etcd_errors.ClientError as exc:
            raise self._failed(exc) from None
        except (TimeoutError, asyncio.TimeoutError):
            future.cancel()
            raise self._failed(asyncio.TimeoutError()) from None
        with self._health_lock:
            self._last_error = None
        return result

    def _failed(self, exc):
        text = "etcd at %s: %s" % (", ".join(self.endpoints), _describe(exc))
        if self._tls and any(m in text for m in ("TSI_", "SSL", "andshake")):
            # gRPC's words for a refused client certificate ("Unwrap failed")
            # do not say TLS: say it, and what to check
            text += ("; the TLS handshake failed: check that kvstore-ca-file signed etcd's "
                     "certificate and that etcd trusts the CA of kvstore-cert-file")
        with self._health_lock:
            self._last_error, self._last_error_at = text, time.time()
        return KvstoreError(text)

    def last_error(self):
        """The last failure, or None if the last call succeeded."""
        with self._health_lock:
            return self._last_error

    def close(self):
        if self._closed:
            return
        self._closed = True
        try:
            asyncio.run_coroutine_threadsafe(self._client.close(), self._loop).result(5.0)
        except Exception:  # closing what may already be broken
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5.0)

    # --- keys ---

    def get(self, key):
        """Item or None."""
        got = self._run(self._client.get(key.encode()))
        return None if got is None else _item(got)

    def list(self, prefix):
        """(revision, [Item]) of every key under prefix, at one revision."""
        revision, items, _ = self.range(prefix)
        return revision, items

    def range(self, prefix, limit=0):
        """(revision, [Item], count): the first `limit` keys under prefix (all
        if 0), and how many there are, at one revision."""
        raw = prefix.encode()
        request = rpc.RangeRequest(key=raw, range_end=utils.prefix_range_end(raw),
                                   limit=limit)

        async def go():
            await self._client.connect()
            return await self._client.kvstub.Range(request, timeout=max(self.timeout, 30.0),
                                                   metadata=self._client.metadata)
        try:
            got = self._run(go(), timeout=max(self.timeout, 30.0))
        except grpc.aio.AioRpcError as exc:
            raise self._failed(etcd_errors.ClientError(exc.details())) from None
        return got.header.revision, [_item(kv) for kv in got.kvs], got.count

    def revision(self):
        async def go():
            return await self._client.get_prefix(b"\0", keys_only=True)
        return self._run(go()).header.revision

    def put(self, key, value, lease=0):
        return self._run(self._client.put(key.encode(), value, lease=lease or None)).header.revision

    def delete(self, key):
        return self._run(self._client.delete(key.encode())) is not None

    def delete_prefix(self, prefix):
        return len(self._run(self._client.delete_prefix(prefix.encode())))

    def txn(self, compare, success, failure=()):
        """Compare-and-swap: (succeeded, [reply per operation]): a get's
        reply is a list of Items, a put's or delete's the revision it made.
        Build the parts with `when_*` and `op_*` below."""
        started = time.monotonic()
        ok, responses = self._run(self._client.transaction(list(compare), list(success),
                                                           list(failure)))
        self._latency = time.monotonic() - started
        return ok, [_reply(r) for r in responses]

    # compare and operation builders for txn()
    def when_absent(self, key):
        return self._client.transactions.create(key.encode()) == 0

    def when_created(self, key, revision):
        return self._client.transactions.create(key.encode()) == revision

    def when_none_under(self, prefix):
        """True when no key has this prefix (a range compare: every key of
        the range has create revision 0, and an empty range compares as 0)."""
        raw = prefix.encode()
        return self._client.transactions.create(raw, range_end=utils.prefix_range_end(raw)) == 0

    def when_value(self, key, value):
        return self._client.transactions.value(key.encode()) == value

    def op_put(self, key, value, lease=0):
        return self._client.transactions.put(key.encode(), value, lease=lease or None)

    def op_get(self, key):
        return self._client.transactions.get(key.encode())

    def op_delete(self, key):
        return self._client.transactions.delete(key.encode())

    # --- leases ---

    def grant(self, ttl):
        return self._run(self._client.lease(ttl)).id

    def lease_ttl(self, lease_id):
        """Seconds left, or -1 if the lease is gone."""
        return self._run(self._client.get_lease_info(lease_id, keys=False)).TTL

    def lease_keys(self, lease_id):
        """The keys attached to a lease."""
        info = self._run(self._client.get_lease_info(lease_id, keys=True))
        return [k.decode("utf-8", "replace") for k in info.keys]

    def revoke(self, lease_id):
        self._run(self._client.revoke_lease(lease_id))

    def keep_alive(self, lease_id, interval, on_lost):
        """Refresh the lease every `interval` s on the loop; call on_lost()
        (on the loop thread, briefly) when etcd says the lease is gone."""
        async def loop():
            while True:
                await asyncio.sleep(interval)
                try:
                    reply = await self._client.refresh_lease(lease_id)
                except Exception as exc:  # etcd away: try again next round
                    self._failed(exc)
                    continue
                ttl = getattr(reply, "TTL", None)
                if ttl is not None and ttl <= 0:
                    on_lost()
                    return
        return asyncio.run_coroutine_threadsafe(loop(), self._loop)

    # --- watches ---

    def watch(self, prefix, start_revision, sink):
        """Watch everything under prefix from start_revision on; puts
        `[Event, ...]` batches, or COMPACTED, into `sink` (a queue.Queue).
        Resumes after errors from the revision after the last one
        delivered, with exponential back-off and jitter. Returns a handle
        with cancel()."""
        raw = prefix.encode()
        state = {"next": start_revision, "stop": False}

        async def run():
            backoff = 0.2
            while not state["stop"]:
                try:
                    stream = await self._client.watch(raw, range_end=utils.prefix_range_end(raw),
                                                      start_revision=state["next"])
                    state["stream"] = stream
                    backoff = 0.2
                    async for ev in stream:
                        kind = "put" if ev.kind == "PUT" else "delete"
                        sink.put([Event(kind, ev.kv.key.decode("utf-8", "replace"),
                                        ev.kv.value, ev.kv.create_revision, ev.kv.mod_revision)])
                        state["next"] = ev.kv.mod_revision + 1
                    if state["stop"]:
                        return
                    raise KvstoreError("watch stream ended")
                except etcd_errors.RevisionCompactedError:
                    sink.put(COMPACTED)
                    return
                except asyncio.CancelledError:
                    return
                except Exception as exc:
                    if state["stop"]:
                        return
                    self._failed(exc)
                    await asyncio.sleep(backoff * (0.5 + random.random()))
                    backoff = min(backoff * 2, 5.0)

        task = asyncio.run_coroutine_threadsafe(run(), self._loop)

        class Handle:
            def cancel(_self):
                state["stop"] = True
                task.cancel()

            def next_revision(_self):
                return state["next"]
        return Handle()

    # --- health ---

    def health(self):
        """What `status` and `check` show: endpoints, leader, latency, last error."""
        out = {"endpoints": self.endpoints, "leader": None, "latencyMs": None,
               "lastError": None, "lastErrorAt": None, "reachable": False}
        started = time.monotonic()
        try:
            status = self._run(self._client.status())
            out["reachable"] = True
            out["latencyMs"] = round((time.monotonic() - started) * 1000, 2)
            out["leader"] = "%x" % status.leader.id if getattr(status, "leader", None) else None
            out["version"] = status.version
        except KvstoreError:
            pass
        with self._health_lock:
            out["lastError"], out["lastErrorAt"] = self._last_error, self._last_error_at
        return out


def drain(sink, first_timeout):
    """Every batch waiting in a watch sink (at least one, if it comes in
    time): events joined, or COMPACTED alone."""
    out = []
    try:
        item = sink.get(timeout=first_timeout)
    except queue.Empty:
        return out
    while True:
        if item == COMPACTED:
            return COMPACTED
        out.extend(item)
        try:
            item = sink.get_nowait()
        except queue.Empty:
            return out


def _reply(response):
    if isinstance(response, list):
        return [_item(kv) for _, kv in response]
    return getattr(response, response.WhichOneof("response")).header.revision


def _item(kv):
    return Item(kv.key.decode("utf-8", "replace"), kv.value, kv.create_revision,
                kv.mod_revision, kv.lease)
