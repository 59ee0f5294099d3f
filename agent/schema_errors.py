"""jsonschema errors as one-line messages that name what was wrong.

The API document's schemas say what a value must be; this turns the most
relevant jsonschema error into "endpoint request: 'netns' must be a
non-empty string, not ''" (what, where, what was expected, what came),
instead of jsonschema's own text, which names neither the request nor the
field's place in it. A schema may say what it expects in words with the
`x-expected` keyword (the endpoint key: CONTAINERID:IFNAME).
"""

from jsonschema.exceptions import best_match

_TYPE_WORDS = {"string": "a string", "integer": "an integer", "number": "a number",
               "boolean": "a boolean", "object": "an object", "array": "a list", "null": "null"}
_PLURALS = {"string": "strings", "integer": "integers", "number": "numbers",
            "boolean": "booleans", "object": "objects", "array": "lists"}


def first_error(validator, instance):
    """The most relevant error of `instance`, or None if it is valid."""
    return best_match(validator.iter_errors(instance))


def body_message(what, error):
    """'what: 'a.b[0]' must be ..., not ...' for an error in a request body."""
    path = list(error.absolute_path)
    schema = error.schema if isinstance(error.schema, dict) else {}
    if error.validator == "required":
        missing = next((n for n in error.validator_value if n not in error.instance), None)
        wanted = describe(schema.get("properties", {}).get(missing, {}))
        return "%s: '%s' is missing%s" % (what, place(path + [missing]),
                                           " (must be %s)" % wanted if wanted else "")
    wanted = describe(schema)
    if not wanted:  # a keyword describe() does not word: jsonschema's own text
        return "%s: %s%s" % (what, "'%s' " % place(path) if path else "", error.message)
    where = "%s: '%s'" % (what, place(path)) if path else what
    return "%s must be %s, not %s" % (where, wanted, found(error.instance))


def parameter_message(what, value, error):
    """'invalid what 'value': expected ...' for a path or query parameter."""
    schema = error.schema if isinstance(error.schema, dict) else {}
    return "invalid %s '%s': expected %s" % (what, value, describe(schema) or error.message)


def place(path):
    """['files', 0, 'source'] -> files[0].source"""
    out = ""
    for part in path:
        out += "[%d]" % part if isinstance(part, int) else ("." if out else "") + str(part)
    return out


def found(value):
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:37] + "...")
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return repr(value)
    return "a list" if isinstance(value, list) else "an object"


def describe(schema):
    """What a schema accepts, in words ('' when it cannot say)."""
    if not isinstance(schema, dict):
        return ""
    if "x-expected" in schema:
        return schema["x-expected"]
    if "const" in schema:
        return repr(schema["const"])
    if "enum" in schema:
        values = [repr(v) for v in schema["enum"]]
        return "one of " + ", ".join(values) if len(values) > 1 else values[0]
    types = schema.get("type", [])
    words = [_one(t, schema) for t in ([types] if isinstance(types, str) else types)]
    for key in ("oneOf", "anyOf"):
        words += [w for w in (describe(s) for s in schema.get(key, [])) if w]
    return " or ".join(words)


def _one(kind, schema):
    if kind == "string":
        word = "a non-empty string" if schema.get("minLength", 0) >= 1 else "a string"
        if "maxLength" in schema:
            word += " of at most %d characters" % schema["maxLength"]
        if "pattern" in schema:
            word += " matching %s" % schema["pattern"]
        return word
    if kind in ("integer", "number"):
        low, high = schema.get("minimum"), schema.get("maximum")
        word = _TYPE_WORDS[kind]
        if low is not None and high is not None:
            return "%s from %s to %s" % (word, low, high)
        if low is not None:
            return "%s of at least %s" % (word, low)
        return word if high is None else "%s of at most %s" % (word, high)
    if kind == "array" and isinstance(schema.get("items"), dict):
        items = schema["items"]
        kinds = items.get("type")
        if isinstance(kinds, str) and kinds in _PLURALS:
            prefix = "non-empty " if kinds == "string" and items.get("minLength", 0) >= 1 else ""
            return "a list of %s%s" % (prefix, _PLURALS[kinds])
    return _TYPE_WORDS.get(kind, kind)
