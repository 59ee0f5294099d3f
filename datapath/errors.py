"""The datapath's exceptions (in their own module so that every part of the
package can raise them; `loader` re-exports them)."""


class DatapathError(Exception):
    """A datapath operation failed; the message names the object."""


class LinkNotFound(DatapathError):
    def __init__(self, ifindex: int):
        super().__init__(f"link {ifindex} not found")
        self.ifindex = ifindex
