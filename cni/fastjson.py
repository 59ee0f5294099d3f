"""JSON for the plugin's hot path through CPython's C accelerator.

`import json` pulls in `re`, `enum`, `collections` and `functools`: ~7 ms
of every plugin call (docs/benchmarks.md). The C scanner and encoder in
`_json` are what `json` itself runs; this module calls them directly and,
on any error or where `_json` is missing, defers to `json` so that errors
carry exactly json's exception and message. Results are identical to
`json.loads` / `json.dumps` with default arguments (tests/plugin/test_fastjson).
"""

try:
    import _json
except ImportError:  # not CPython: take the slow path
    _json = None

_WS = " \t\n\r"


class _Decoding:
    # The attributes json.JSONDecoder hands to the C scanner.
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = float  # NaN, Infinity, -Infinity, as json accepts them
    memo = None


if _json is not None:
    _scan = _json.make_scanner(_Decoding())
    _encode = _json.make_encoder(None, None, _json.encode_basestring_ascii, None,
                                 ": ", ", ", False, False, True)


def _slow():
    import json
    return json


def loads(text):
    if _json is None:
        return _slow().loads(text)
    try:
        if isinstance(text, (bytes, bytearray)):
            text = text.decode("utf-8")
        if text.startswith("\ufeff"):
            raise ValueError("BOM")  # json refuses it with its own message
        n = len(text)
        i = 0
        while i < n and text[i] in _WS:
            i += 1
        value, end = _scan(text, i)
        while end < n and text[end] in _WS:
            end += 1
        if end == n:
            return value
    except Exception:
        pass
    return _slow().loads(text)


def dumps(value):
    if _json is None:
        return _slow().dumps(value)
    try:
        return "".join(_encode(value, 0))
    except Exception:
        return _slow().dumps(value)
