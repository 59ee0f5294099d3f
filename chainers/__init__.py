"""Every chaining mode, imported in one visible place so each registers itself."""

from chainers import generic_veth  # noqa: F401
