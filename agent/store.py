"""The agent's embedded state store (sqlite), so a restarted agent restores.

One row per endpoint: its stable key (`containerID:ifname`), its numeric id,
and the endpoint as JSON. WAL with synchronous=NORMAL: a crash of the agent
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

    def close(self):
        with self._lock:
            self._db.close()
