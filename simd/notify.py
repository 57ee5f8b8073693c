"""sd_notify(3) without a dependency: READY=1, STATUS=..., WATCHDOG=1, STOPPING=1 to systemd."""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(message: str) -> bool:
    """Send `message` to $NOTIFY_SOCKET; False when not run by systemd (unset) or the send failed."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    elif not address.startswith("/"):
        log.debug("NOTIFY_SOCKET %r is not an AF_UNIX path; not notifying", address)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
        return True
    except OSError as e:
        log.debug("sd_notify %r failed: %s", message, e)
        return False


def watchdog_interval() -> float | None:
    """The systemd watchdog timeout in seconds (WatchdogSec=), or None when no watchdog is asked of
    this process. Send WATCHDOG=1 at least every `interval / 2`."""
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec / 1_000_000
