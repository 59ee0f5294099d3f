"""The agent's embedded state store (sqlite), so a restarted agent restores.

Endpoints (stable key `containerID:ifname`, numeric id, the endpoint as
JSON), identities (number <-> canonical label set, so the same labels keep
their number across restarts) and policy sources (the YAML text of each
imported file, re-parsed on start) and services (by frontend). WAL with synchronous=NORMAL: a crash of the agent
loses nothing; a power cut may lose the last commits, never the database,
and after a power cut every veth is gone anyway and gets reconciled.
Only the agent's worker thread writes; readers use the manager's cache.
"""

import json
import os
import sqlite3
import threading

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


class Store:
    def __init__(self, state_dir):
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        self.path = os.path.join(state_dir, "agent.db")
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def endpoints(self):
        with self._lock:
            rows = self._db.execute("SELECT data FROM endpoints ORDER BY id").fetchall()
        return [json.loads(data) for (data,) in rows]

    def put_endpoint(self, endpoint):
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO endpoints (key, id, data) VALUES (?, ?, ?)",
                (endpoint["key"], endpoint["id"], json.dumps(endpoint, sort_keys=True)))

    def delete_endpoint(self, key):
        with self._lock:
            self._db.execute("DELETE FROM endpoints WHERE key = ?", (key,))

    def identities(self):
        with self._lock:
            return self._db.execute("SELECT id, labels FROM identities ORDER BY id").fetchall()

    def put_identity(self, number, labels):
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO identities (id, labels) VALUES (?, ?)",
                             (number, labels))

    def delete_identity(self, number):
        with self._lock:
            self._db.execute("DELETE FROM identities WHERE id = ?", (number,))

    def policy_sources(self):
        with self._lock:
            return self._db.execute(
                "SELECT source, text FROM policy_sources ORDER BY source").fetchall()

    def put_policy_sources(self, sources):
        """Replace the given sources' texts in one transaction (None deletes)."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                for source, text in sources.items():
                    if text is None:
                        self._db.execute("DELETE FROM policy_sources WHERE source = ?", (source,))
                    else:
                        self._db.execute("INSERT OR REPLACE INTO policy_sources (source, text) "
                                         "VALUES (?, ?)", (source, text))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def services(self):
        with self._lock:
            rows = self._db.execute("SELECT data FROM services ORDER BY frontend").fetchall()
        return [json.loads(data) for (data,) in rows]

    def put_services(self, services):
        """Store services by frontend key in one transaction (None deletes)."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                for key, svc in services.items():
                    if svc is None:
                        self._db.execute("DELETE FROM services WHERE frontend = ?", (key,))
                    else:
                        self._db.execute("INSERT OR REPLACE INTO services (frontend, data) "
                                         "VALUES (?, ?)", (key, json.dumps(svc, sort_keys=True)))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def close(self):
        with self._lock:
            self._db.close()
