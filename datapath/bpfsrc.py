"""C sources for bcc with our own `#include "x.h"` lines expanded in place.

bcc rewrites map calls (`map.lookup(&key)`) only in the main file it
compiles, not in included headers; expanding the shared headers
(`bpf/shared.h`, `bpf/lb.h`) into the text keeps them usable from both
endpoint.c and sock.c. System includes (`<...>`) are left to the compiler.
"""

import os
import re

_LOCAL_INCLUDE = re.compile(r'^#include "([A-Za-z0-9_.]+)"\s*$', re.M)


def expand(path: str, _seen: frozenset = frozenset()) -> str:
    with open(path) as f:
        text = f.read()
    here = os.path.dirname(os.path.abspath(path))

    def include(match):
        name = os.path.join(here, match.group(1))
        if name in _seen:
            return ""
        return "/* ---- %s ---- */\n%s" % (match.group(1), expand(name, _seen | {name}))

    return _LOCAL_INCLUDE.sub(include, text)
