"""CNI results as plain JSON dicts: validation, conversion between versions,
and reading the addresses out.

Results stay dicts rather than objects so that a prevResult passes through
unchanged: same keys (including ones this plugin does not know), same list
order. Conversion only drops or appends fields, never reorders or rewrites
entries, because later plugins read entries by position (AWS VPC CNI's DEL).

Does not build results of its own and does not talk to the agent.

Hot path: imports only `_socket` (inet_pton; `ipaddress` would pull in
`functools` and `re`) and `cni.errors`.
"""

import _socket

from cni import version
from cni.errors import INVALID_NETWORK_CONFIG, CniError

# Fields that exist only from 1.1.0; they have no meaning for older readers.
_ROUTE_FIELDS_1_1 = ("mtu", "advmss", "priority", "table", "scope")
_INTERFACE_FIELDS_1_1 = ("mtu", "socketPath", "pciID")


def _invalid(what):
    return CniError(INVALID_NETWORK_CONFIG, "invalid prevResult: " + what)


def _copy(value):
    # JSON values only; cheaper to import nothing than `copy`.
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def ip_family(text):
    """4 or 6 if text is an IP address as Go's net.ParseIP reads it, else None."""
    if not isinstance(text, str) or not text.isascii():
        return None
    family = _socket.AF_INET6 if ":" in text else _socket.AF_INET
    try:
        _socket.inet_pton(family, text)
    except (OSError, ValueError):
        return None
    return 6 if family == _socket.AF_INET6 else 4


def cidr_family(text):
    """4 or 6 if text is address/prefix as Go's net.ParseCIDR reads it, else None."""
    if not isinstance(text, str):
        return None
    addr, sep, prefix = text.rpartition("/")
    # a netmask ("/255.255.255.0") is not a prefix length in CNI
    if not sep or not (prefix.isascii() and prefix.isdigit()) or len(prefix) > 3:
        return None
    family = ip_family(addr)
    if family is None or int(prefix) > (32 if family == 4 else 128):
        return None
    return family


def _cidr(value, where):
    family = cidr_family(value)
    if family is None:
        raise _invalid("%s %s is not an address/prefix" % (where, _show(value)))
    return family


def _ip(value, where):
    family = ip_family(value)
    if family is None:
        raise _invalid("%s %s is not an IP address" % (where, _show(value)))
    return family


def _show(value):
    return "'%s'" % value if isinstance(value, str) else repr(value)


def _list_of_objects(result, key):
    items = result.get(key)
    if items is None:
        return []
    if not isinstance(items, list):
        raise _invalid("%s must be a list" % key)
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise _invalid("%s[%d] must be an object" % (key, i))
    return items


def validate(result) -> None:
    """Check the parts of a result this plugin (or a later one) relies on."""
    if not isinstance(result, dict):
        raise _invalid("must be an object")
    interfaces = _list_of_objects(result, "interfaces")
    for i, itf in enumerate(interfaces):
        name = itf.get("name")
        if not isinstance(name, str) or not name:
            raise _invalid("interfaces[%d].name must be a non-empty string" % i)
    for i, ip in enumerate(_list_of_objects(result, "ips")):
        _cidr(ip.get("address"), "ips[%d].address" % i)
        if ip.get("gateway") is not None:
            _ip(ip["gateway"], "ips[%d].gateway" % i)
        idx = ip.get("interface")
        if idx is None:
            continue
        if type(idx) is not int or idx < 0:
            raise _invalid("ips[%d].interface %s is not an index" % (i, _show(idx)))
        # Results without interfaces (Weave, IPAM-only) are legitimate; an
        # index is only checkable when there is something to index.
        if interfaces and idx >= len(interfaces):
            raise _invalid(
                "ips[%d].interface %d is out of range (%d interfaces)"
                % (i, idx, len(interfaces))
            )
    for i, route in enumerate(_list_of_objects(result, "routes")):
        _cidr(route.get("dst"), "routes[%d].dst" % i)
        if route.get("gw") is not None:
            _ip(route["gw"], "routes[%d].gw" % i)
    dns = result.get("dns")
    if dns is not None and not isinstance(dns, dict):
        raise _invalid("dns must be an object")


def convert(result, to_version: str) -> dict:
    """Return a new dict holding `result` in `to_version`; `result` is untouched.

    0.3.0/0.3.1/0.4.0 share one shape and 1.0.0/1.1.0 another. Going to 1.x
    drops `ips[].version`; going to 0.x adds it where missing (from the
    address family) and keeps an existing one. Going below 1.1.0 drops the
    1.1-only route and interface fields. Everything else is kept as is.
    """
    if not isinstance(result, dict):
        raise _invalid("must be an object")
    if "cniVersion" not in result:
        raise CniError(INVALID_NETWORK_CONFIG, "prevResult has no cniVersion")
    from_version = result["cniVersion"]
    try:
        version.require_supported(from_version)
    except CniError as exc:
        raise CniError(exc.code, "prevResult: " + exc.msg) from None
    version.require_supported(to_version)
    validate(result)

    out = _copy(result)
    out["cniVersion"] = to_version
    to_1x = version.at_least(to_version, "1.0.0")
    if out.get("ips"):  # null is no ips, as for libcni; kept as it came
        out["ips"] = [_convert_ip(ip, to_1x) for ip in out["ips"]]
    if not version.at_least(to_version, "1.1.0") and from_version != to_version:
        for route in out.get("routes") or ():
            for key in _ROUTE_FIELDS_1_1:
                route.pop(key, None)
        for itf in out.get("interfaces") or ():
            for key in _INTERFACE_FIELDS_1_1:
                itf.pop(key, None)
    return out


def _convert_ip(ip, to_1x):
    if to_1x:
        ip.pop("version", None)
        return ip
    if "version" in ip:
        return ip
    family = str(cidr_family(ip["address"]))
    # libcni's 0.x structs marshal `version` first.
    return {"version": family, **ip}


def addresses(result) -> list[str]:
    """The `ips[].address` CIDRs in result order."""
    return [ip["address"] for ip in result.get("ips") or ()]


def addresses_for_interface(result, ifname: str) -> list[str]:
    """The CIDRs assigned to interface `ifname`.

    An ip without an `interface` index belongs to the container by
    convention (Weave-style results have no interfaces at all), so it is
    included; an index that names another interface, or that cannot be
    resolved, excludes the ip.
    """
    interfaces = result.get("interfaces") or []
    out = []
    for ip in result.get("ips") or ():
        idx = ip.get("interface")
        if idx is None:
            out.append(ip["address"])
        elif 0 <= idx < len(interfaces) and interfaces[idx].get("name") == ifname:
            out.append(ip["address"])
    return out
