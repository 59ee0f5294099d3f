"""C sources for bcc with our own `#include "x.h"` lines expanded in place.

bcc rewrites map calls (`map.lookup(&key)`) only in the main file it
compiles, not in included headers; expanding our headers (`bpf/lib/*.h`)
into the text keeps them usable from both endpoint.c and sock.c. A
header's own includes are expanded where it names them (paths relative to
the including file), each header once: the first include expands it, later
ones are dropped, as its include guard would. System includes (`<...>`)
are left to the compiler.
"""

import os
import re

_LOCAL_INCLUDE = re.compile(r'^#include "([A-Za-z0-9_./]+)"\s*$', re.M)


def expand(path: str) -> str:
    """The text of `path` with its local includes expanded."""
    return _expand(os.path.abspath(path), set())


def _expand(path: str, done: set[str]) -> str:
    done.add(path)
    with open(path) as f:
        text = f.read()
    here = os.path.dirname(path)

    def include(match):
        name = os.path.normpath(os.path.join(here, match.group(1)))
        if name in done:
            return ""
        return "/* ---- %s ---- */\n%s" % (match.group(1), _expand(name, done))

    return _LOCAL_INCLUDE.sub(include, text)
