"""The chainer registry: one place, no duplicates, clear errors, schema in step."""

import json
import os
import re

import pytest

import chainers
from chainers import api
from cli.check import SCHEMA_PATH
from cni.errors import INVALID_NETWORK_CONFIG, CniError


def test_generic_veth_is_registered():
    assert "generic-veth" in api.names()
    assert api.lookup("generic-veth").name == "generic-veth"


def test_duplicate_registration_is_refused():
    with pytest.raises(ValueError, match="registered twice"):
        api.register("generic-veth", object())


@pytest.mark.parametrize("mode, words", [(None, ["chaining-mode", "generic-veth"]),
                                         ("bogus", ["'bogus'", "generic-veth"])])
def test_lookup_errors_name_the_valid_modes(mode, words):
    with pytest.raises(CniError) as err:
        api.lookup(mode)
    assert err.value.code == INVALID_NETWORK_CONFIG
    for w in words:
        assert w in err.value.msg


def test_schema_lists_exactly_the_registered_modes():
    with open(SCHEMA_PATH) as f:
        schema = json.load(f)
    assert sorted(schema["properties"]["chaining-mode"]["enum"]) == api.names()


def test_every_chainer_module_is_imported_in_one_place():
    here = os.path.dirname(chainers.__file__)
    modules = {n[:-3] for n in os.listdir(here) if n.endswith(".py")} - {"__init__", "api"}
    with open(os.path.join(here, "__init__.py")) as f:
        init = f.read()
    imported = init.split("from chainers import (", 1)[1].split(")", 1)[0]
    for m in modules:
        assert re.search(r"^\s+%s," % m, imported, re.M), m

