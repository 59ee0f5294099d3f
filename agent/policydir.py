"""The watched policy directory: a node-local source of policy files.

Every policy file of the directory (as `agent.policy.parse.policy_files`
lists them) is imported when it changes; a removed file's rules go too.
Scanned on the agent's worker; it does not parse rules itself.
"""

import os

from agent.errors import AgentError
from agent.policy.parse import policy_files


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
        if not os.path.isdir(self.directory):
            return {}  # removed: so are its rules
        # Any other failure to list raises (and is logged): rules stay.
        out = {}
        for path in policy_files(self.directory):
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
                count = self._enf.import_files([{"source": path, "text": text}], local=True)
                self._log.info("policy file %s imported: %d rule(s)", path, count)
            except (OSError, UnicodeDecodeError) as exc:
                self._log.error("policy file %s unreadable: %s", path, exc)
            except AgentError as exc:
                self._log.error("policy file %s rejected, previous rules kept: %s",
                                path, exc.message)
