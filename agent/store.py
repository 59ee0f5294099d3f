"""The agent's embedded state store (sqlite), so a restarted agent restores.

Endpoints (stable key `containerID:ifname`, numeric id, the endpoint as
JSON), identities (number <-> canonical label set, so the same labels keep
their number across restarts) and policy sources (the YAML text of each
imported file, re-parsed on start) and services (by frontend). WAL with
synchronous=NORMAL: a crash of the agent loses nothing; a power cut may lose
the last commits, never the database, and after a power cut every veth is
gone anyway and gets reconciled. Only the agent's worker thread writes;
readers use the manager's cache.

The state volume may be small (a 2 MB volume once filled up with sqlite's
default 4 MB write-ahead log and 0 endpoints, for good): the log is
checkpointed every WAL_CHECKPOINT_PAGES and cut back to WAL_LIMIT_BYTES, and
a full volume is `StoreFull`, a "try again later" naming the path and the
free space, after one checkpoint that truncates the log has been tried. The
next write after space returns simply succeeds.
"""

import json
import os
import sqlite3
import threading

from agent.errors import Busy

WAL_CHECKPOINT_PAGES = 64  # 256 KiB of 4 KiB pages (sqlite's default: 1000)
WAL_LIMIT_BYTES = 256 << 10

SCHEMA = """
CREATE TABLE IF NOT EXISTS endpoints (
    key  TEXT PRIMARY KEY,
    id   INTEGER NOT NULL UNIQUE,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS identities (
    id     INTEGER PRIMARY KEY,
    labels TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS policy_sources (
    source TEXT PRIMARY KEY,
    text   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS services (
    frontend TEXT PRIMARY KEY,
    data     TEXT NOT NULL
);
"""


class StoreFull(Busy):
    """The state volume has no room for a write: retryable (CNI code 11)."""


class Store:
    def __init__(self, state_dir):
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        self.path = os.path.join(state_dir, "agent.db")
        self._lock = threading.Lock()
        self.last_error = None  # (time, message) of the last failed write, for status
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._run(lambda db: self._open(db))

    @staticmethod
    def _open(db):
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA wal_autocheckpoint=%d" % WAL_CHECKPOINT_PAGES)
        db.execute("PRAGMA journal_size_limit=%d" % WAL_LIMIT_BYTES)
        db.executescript(SCHEMA)
        # A log left large by an older agent (or a full volume) goes now.
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _run(self, fn):
        """fn(db) under the lock; a full volume is retried once after
        truncating the log, then reported as StoreFull."""
        with self._lock:
            for attempt in (1, 2):
                try:
                    return fn(self._db)
                except sqlite3.OperationalError as exc:
                    if getattr(exc, "sqlite_errorcode", None) != sqlite3.SQLITE_FULL:
                        raise
                    if attempt == 1:
                        try:
                            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                        except sqlite3.Error:
                            pass
                        continue
                    self.last_error = str(exc)
                    raise StoreFull("state volume of '%s' is full (%s free): %s; free space "
                                    "there or give the agent a larger --state-dir"
                                    % (self.path, human_bytes(self.volume()["freeBytes"]), exc)) from None

    def _transaction(self, statements):
        """Run (sql, params) pairs all or nothing."""
        def tx(db):
            db.execute("BEGIN")
            try:
                for sql, params in statements:
                    db.execute(sql, params)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        self._run(tx)
        self.last_error = None

    def _rows(self, sql):
        return self._run(lambda db: db.execute(sql).fetchall())

    def volume(self):
        """The store's files and its volume's free space (status, check)."""
        st = os.statvfs(os.path.dirname(self.path))
        sizes = {}
        for suffix in ("", "-wal", "-shm"):
            try:
                sizes["agent.db" + suffix] = os.path.getsize(self.path + suffix)
            except OSError:
                pass
        return {"path": self.path, "files": sizes, "freeBytes": st.f_bavail * st.f_frsize,
                "sizeBytes": st.f_blocks * st.f_frsize, "lastError": self.last_error}

    def endpoints(self):
        return [json.loads(data) for (data,) in self._rows("SELECT data FROM endpoints ORDER BY id")]

    def put_endpoint(self, endpoint):
        self._transaction([("INSERT OR REPLACE INTO endpoints (key, id, data) VALUES (?, ?, ?)",
                            (endpoint["key"], endpoint["id"], json.dumps(endpoint, sort_keys=True)))])

    def delete_endpoint(self, key):
        self._transaction([("DELETE FROM endpoints WHERE key = ?", (key,))])

    def identities(self):
        return self._rows("SELECT id, labels FROM identities ORDER BY id")

    def put_identity(self, number, labels):
        self._transaction([("INSERT OR REPLACE INTO identities (id, labels) VALUES (?, ?)",
                            (number, labels))])

    def delete_identity(self, number):
        self._transaction([("DELETE FROM identities WHERE id = ?", (number,))])

    def policy_sources(self):
        return self._rows("SELECT source, text FROM policy_sources ORDER BY source")

    def put_policy_sources(self, sources):
        """Replace the given sources' texts in one transaction (None deletes)."""
        self._transaction([
            ("DELETE FROM policy_sources WHERE source = ?", (source,)) if text is None else
            ("INSERT OR REPLACE INTO policy_sources (source, text) VALUES (?, ?)", (source, text))
            for source, text in sources.items()])

    def services(self):
        return [json.loads(data) for (data,) in self._rows("SELECT data FROM services ORDER BY frontend")]

    def put_services(self, services):
        """Store services by frontend key in one transaction (None deletes)."""
        self._transaction([
            ("DELETE FROM services WHERE frontend = ?", (key,)) if svc is None else
            ("INSERT OR REPLACE INTO services (frontend, data) VALUES (?, ?)",
             (key, json.dumps(svc, sort_keys=True)))
            for key, svc in services.items()])

    def close(self):
        with self._lock:
            self._db.close()


def human_bytes(n):
    """1536 -> '1.5 KiB' (messages and status)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return "%d %s" % (n, unit) if unit == "B" else "%.1f %s" % (n, unit)
        n /= 1024
