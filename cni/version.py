"""CNI spec versions: which ones we speak, parsing, negotiation, VERSION output.

Does not convert results between versions (that is `cni.result`) and does
not read the netconf (that is `cni.netconf`).

Hot path: imports only `cni.errors`.
"""

from cni.errors import INCOMPATIBLE_VERSION, INVALID_NETWORK_CONFIG, CniError

SUPPORTED = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST = "1.1.0"

_SUPPORTED_TEXT = ", ".join(SUPPORTED)


def parse(v) -> tuple[int, int, int]:
    """Return (major, minor, micro); "1.0" means "1.0.0", as in libcni."""
    if not isinstance(v, str):
        raise CniError(
            INVALID_NETWORK_CONFIG,
            "invalid cniVersion %r: must be a string" % (v,),
        )
    parts = v.split(".")
    # isdigit() alone admits non-ASCII digits such as '²'.
    if not 2 <= len(parts) <= 3 or not all(p.isascii() and p.isdigit() for p in parts):
        raise CniError(
            INVALID_NETWORK_CONFIG,
            "invalid cniVersion '%s': expected MAJOR.MINOR.MICRO" % v,
        )
    nums = [int(p) for p in parts]
    if len(nums) == 2:
        nums.append(0)
    return (nums[0], nums[1], nums[2])


def require_supported(v) -> None:
    parse(v)
    if v not in SUPPORTED:
        raise CniError(
            INCOMPATIBLE_VERSION,
            "unsupported cniVersion '%s': supported are %s" % (v, _SUPPORTED_TEXT),
        )


def negotiate(cni_versions) -> str:
    """Pick the highest supported entry of a conflist's `cniVersions` (CNI 1.1).

    Like libcni, an entry that is not a version string fails the whole list
    rather than being skipped: a typo should not silently pick an older
    version.
    """
    if not isinstance(cni_versions, list):
        raise CniError(INVALID_NETWORK_CONFIG, "invalid cniVersions: must be a list")
    by_tuple = {parse(s): s for s in SUPPORTED}
    best = None
    for i, entry in enumerate(cni_versions):
        if not isinstance(entry, str):
            raise CniError(
                INVALID_NETWORK_CONFIG,
                "invalid cniVersions[%d] %r: must be a string" % (i, entry),
            )
        t = parse(entry)
        if t in by_tuple and (best is None or t > best):
            best = t
    if best is None:
        raise CniError(
            INCOMPATIBLE_VERSION,
            "no supported version in cniVersions %s: supported are %s"
            % (", ".join(cni_versions) or "[]", _SUPPORTED_TEXT),
        )
    return by_tuple[best]


def version_result(requested=None) -> dict:
    return {"cniVersion": requested or LATEST, "supportedVersions": list(SUPPORTED)}


def at_least(v, other) -> bool:
    return parse(v) >= parse(other)
