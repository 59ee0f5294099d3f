"""cni.fastjson must be indistinguishable from json with default arguments."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cni import fastjson

pytestmark = pytest.mark.unit

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=5), max_leaves=30)


@settings(max_examples=400)
@given(values)
def test_round_trip_equals_json(value):
    text = json.dumps(value)
    assert fastjson.dumps(value) == text
    assert fastjson.loads(text) == json.loads(text)
    assert fastjson.loads(text.encode()) == json.loads(text)


@settings(max_examples=400)
@given(st.text(alphabet='{}[]",:0123456789.eE+- \t\ntruefalsnul\\u', max_size=30))
def test_arbitrary_text_same_value_or_same_error(text):
    try:
        expected = json.loads(text)
    except ValueError as exc:
        with pytest.raises(type(exc)) as err:
            fastjson.loads(text)
        assert str(err.value) == str(exc)
    else:
        assert fastjson.loads(text) == expected


@pytest.mark.parametrize("text", ["", "   ", "{not json", '{"a": 1} x', "[1,]", "\ufeff{}"])
def test_errors_are_jsons(text):
    with pytest.raises(ValueError) as theirs:
        json.loads(text)
    with pytest.raises(ValueError) as ours:
        fastjson.loads(text)
    assert str(ours.value) == str(theirs.value)


def test_unserializable_raises_type_error():
    with pytest.raises(TypeError, match="not JSON serializable"):
        fastjson.dumps({"a": object()})


def test_nan_and_infinity_like_json():
    assert fastjson.dumps(float("inf")) == json.dumps(float("inf"))
    assert fastjson.loads("[Infinity, -Infinity]") == json.loads("[Infinity, -Infinity]")
