"""The agent's periodic work: host addresses, identity expiry, CT garbage
collection, the watched policy directory, and the drop-event pump.

Every job that touches endpoints, identities or policy runs on the agent's
single worker (submitted from a timer thread); the event pump only reads
the perf buffer and hands events to the hub.
"""

import os
import threading

from agent.errors import AgentError

POLICY_SUFFIXES = (".yaml", ".yml", ".json")


def every(stop, seconds, name, job, log):
    """Run job() every `seconds` on a daemon thread until stop is set."""
    def loop():
        while not stop.wait(seconds):
            try:
                job()
            except Exception:
                log.exception("periodic job %s failed", name)
    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    return thread


class PolicyDirWatcher:
    """Imports changed files from a directory; a removed file's rules go too.

    A file that does not parse is logged and skipped, and the rules it gave
    before stay in force: a typo in an edit must not drop a node's policy.
    """

    def __init__(self, directory, enforcement, log):
        self.directory = os.path.abspath(directory)
        self._enf = enforcement
        self._log = log
        self._seen = {}  # path -> (mtime_ns, size)

    def _files(self):
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return {}
        out = {}
        for name in names:
            path = os.path.join(self.directory, name)
            if name.endswith(POLICY_SUFFIXES) and os.path.isfile(path):
                st = os.stat(path)
                out[path] = (st.st_mtime_ns, st.st_size)
        return out

    def scan(self):
        files = self._files()
        known = {r.source for r in self._enf.repo.rules()
                 if os.path.dirname(r.source) == self.directory}
        for path in sorted(known - set(files)):
            removed = self._enf.delete_policy(source=path)
            self._log.info("policy file %s removed: %d rule(s) deleted", path, removed)
            self._seen.pop(path, None)
        for path, stamp in sorted(files.items()):
            if self._seen.get(path) == stamp:
                continue
            self._seen[path] = stamp
            try:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
                count = self._enf.import_files([{"source": path, "text": text}])
                self._log.info("policy file %s imported: %d rule(s)", path, count)
            except (OSError, UnicodeDecodeError) as exc:
                self._log.error("policy file %s unreadable: %s", path, exc)
            except AgentError as exc:
                self._log.error("policy file %s rejected, previous rules kept: %s",
                                path, exc.message)


def pump_events(datapath, hub, stop, log):
    """Drain the datapath's perf buffer into the hub until stop is set."""
    def publish(event):
        event.setdefault("type", "drop")
        hub.publish(event)

    datapath.open_events(publish)
    while not stop.is_set():
        try:
            datapath.poll_events(200)
        except Exception:
            log.exception("reading datapath events failed")
            stop.wait(1.0)
