"""systemd's notify protocol: READY=1 once the API serves, WATCHDOG=1 while it does.

With `Type=notify` (conf/cilium-cni-agent.service), systemd holds back the
units ordered after the agent (kubelet, containerd, CRI-O) until READY=1,
so no pod is wired before the agent can take its endpoint; with
`WatchdogSec`, an agent whose worker stops answering is restarted. Outside
systemd (no NOTIFY_SOCKET) every call is a no-op. Written on the standard
library: the protocol is one datagram per message.
"""

import os
import socket


class Notifier:
    def __init__(self, environ=os.environ):
        address = environ.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]  # the abstract namespace
        self._address = address or None
        usec = environ.get("WATCHDOG_USEC", "")
        # Ping at half the interval, as sd_watchdog_enabled(3) advises.
        # WATCHDOG_PID is not compared with ours: a bundled binary's
        # bootloader may run the agent in its child (NotifyAccess=all).
        self.watchdog_seconds = int(usec) / 2e6 if usec.isdigit() and int(usec) else None

    @property
    def enabled(self):
        return self._address is not None

    def send(self, message):
        """Send one message; False when there is no systemd to hear it."""
        if self._address is None:
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message.encode(), self._address)
        return True

    def ready(self, status=""):
        return self.send("READY=1\n" + ("STATUS=%s\n" % status if status else ""))

    def stopping(self):
        return self.send("STOPPING=1\n")

    def watchdog(self):
        return self.send("WATCHDOG=1\n")
