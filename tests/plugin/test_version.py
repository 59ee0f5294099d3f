import json
import os

import pytest

from cni import version
from cni.errors import INCOMPATIBLE_VERSION, INVALID_NETWORK_CONFIG, CniError

pytestmark = pytest.mark.unit

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize(
    "text, expected",
    [("0.3.0", (0, 3, 0)), ("1.1.0", (1, 1, 0)), ("1.0", (1, 0, 0)), ("10.20.30", (10, 20, 30))],
)
def test_parse(text, expected):
    assert version.parse(text) == expected


@pytest.mark.parametrize("bad", ["abc", "", "1", "1.0.0.0", "1.x.0", "1..0", "v1.0.0", "1.².0"])
def test_parse_rejects_garbage(bad):
    with pytest.raises(CniError) as exc:
        version.parse(bad)
    assert exc.value.code == INVALID_NETWORK_CONFIG
    assert repr(bad)[1:-1] in exc.value.msg


@pytest.mark.parametrize("bad", [None, 1, 1.0, ["1.0.0"]])
def test_parse_rejects_non_strings(bad):
    with pytest.raises(CniError) as exc:
        version.parse(bad)
    assert exc.value.code == INVALID_NETWORK_CONFIG


def test_supported_is_sorted_and_latest_is_last():
    assert [version.parse(v) for v in version.SUPPORTED] == sorted(
        version.parse(v) for v in version.SUPPORTED
    )
    assert version.LATEST == version.SUPPORTED[-1] == "1.1.0"


@pytest.mark.parametrize("v", version.SUPPORTED)
def test_require_supported_accepts(v):
    assert version.require_supported(v) is None


def test_require_supported_names_version_and_list():
    with pytest.raises(CniError) as exc:
        version.require_supported("0.2.0")
    assert exc.value.code == INCOMPATIBLE_VERSION
    assert exc.value.msg == (
        "unsupported cniVersion '0.2.0': supported are 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0"
    )


def test_require_supported_garbage_is_config_error():
    with pytest.raises(CniError) as exc:
        version.require_supported("abc")
    assert exc.value.code == INVALID_NETWORK_CONFIG


@pytest.mark.parametrize(
    "versions, expected",
    [
        (["0.4.0", "1.0.0", "1.1.0"], "1.1.0"),
        (["1.1.0", "0.3.1"], "1.1.0"),
        (["0.3.1", "1.0.0", "2.0.0"], "1.0.0"),  # newer than us: skipped
        (["0.1.0", "0.2.0", "0.4.0"], "0.4.0"),
        (["1.0"], "1.0.0"),  # canonical spelling returned
    ],
)
def test_negotiate_picks_highest_supported(versions, expected):
    assert version.negotiate(versions) == expected


@pytest.mark.parametrize("versions", [[], ["0.2.0"], ["2.0.0", "1.2.0"]])
def test_negotiate_none_supported(versions):
    with pytest.raises(CniError) as exc:
        version.negotiate(versions)
    assert exc.value.code == INCOMPATIBLE_VERSION
    assert "supported are 0.3.0" in exc.value.msg


@pytest.mark.parametrize("versions", [["1.0.0", 1], ["1.0.0", None], "1.0.0", None, ["1.0.0", "junk"]])
def test_negotiate_rejects_bad_entries(versions):
    with pytest.raises(CniError) as exc:
        version.negotiate(versions)
    assert exc.value.code == INVALID_NETWORK_CONFIG


def test_version_result():
    assert version.version_result("0.4.0") == {
        "cniVersion": "0.4.0",
        "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"],
    }
    out = version.version_result(None)
    assert out["cniVersion"] == "1.1.0"
    # Must be JSON-serialisable as printed by the plugin.
    assert json.loads(json.dumps(out)) == out


@pytest.mark.parametrize(
    "v, other, expected",
    [
        ("0.4.0", "0.4.0", True),
        ("1.0.0", "0.4.0", True),
        ("0.3.1", "0.4.0", False),
        ("1.0.0", "1.1.0", False),
        ("1.1.0", "1.1.0", True),
        ("0.10.0", "0.4.0", True),  # numeric, not string, comparison
    ],
)
def test_at_least(v, other, expected):
    assert version.at_least(v, other) is expected
