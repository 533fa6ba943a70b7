"""systemd's notify protocol in pure Python: datagrams of `KEY=value` lines to $NOTIFY_SOCKET.

No libsystemd binding: the protocol is one `sendto` of a datagram on an AF_UNIX socket, and a
binding would be one more compiled dependency. A name starting with `@` is an abstract socket
(Linux); `\\0` replaces the `@`. Without $NOTIFY_SOCKET (a developer's shell, the tests) every call
is a no-op, so the daemon runs the same with or without systemd.

A failed send is logged, never raised, and a send never blocks (a listener that stopped reading
must not freeze the daemon's main loop): losing a status line must not stop the daemon, and losing
WATCHDOG=1 is exactly the signal systemd acts on anyway. STATUS= is sent only when it changes.
"""

from __future__ import annotations

import os
import socket
import threading

import structlog

log = structlog.get_logger("dreamd.sd_notify")

NOTIFY_ENV = "NOTIFY_SOCKET"
WATCHDOG_USEC_ENV = "WATCHDOG_USEC"
WATCHDOG_PID_ENV = "WATCHDOG_PID"


def socket_address(value: str) -> str | bytes:
    """The address to send to: `@name` is the abstract name `\\0name`, anything else a path."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


def watchdog_interval(environ: dict[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of $WATCHDOG_USEC), or None when none are wanted.

    systemd sets WATCHDOG_PID to the process it watches; a child that inherited the environment
    must not ping on its parent's behalf.
    """
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get(WATCHDOG_USEC_ENV, "0"))
    except ValueError:
        return None
    if usec <= 0:
        return None
    watched = env.get(WATCHDOG_PID_ENV)
    if watched and watched.isdigit() and int(watched) != (os.getpid() if pid is None else pid):
        return None
    return usec / 1_000_000 / 2


def one_line(text: str, limit: int = 200) -> str:
    """A STATUS= value: one line (a newline would start a new KEY=), bounded."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


class Notifier:
    """Sends notify messages; a no-op when $NOTIFY_SOCKET is unset."""

    def __init__(self, address: str | None = None):
        value = os.environ.get(NOTIFY_ENV) if address is None else address
        self.address = socket_address(value) if value else None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()  # the watchdog loop and job threads both send
        self._last_status: str | None = None
        if address is None:
            # Children (the training process) must not inherit the address and speak for us.
            os.environ.pop(NOTIFY_ENV, None)

    def send(self, **fields: str | int) -> bool:
        """Send `KEY=value` lines in one datagram (keys upper-cased); True if it went out."""
        if self.address is None:
            return False
        message = "\n".join(f"{key.upper()}={value}" for key, value in fields.items())
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                                               | socket.SOCK_NONBLOCK)
                self._sock.sendto(message.encode(), self.address)
            except BlockingIOError:
                log.debug("sd_notify dropped: the listener's queue is full", message=message.split("\n")[0])
                return False
            except OSError as exc:
                log.warning("sd_notify failed", error=str(exc), message=message.split("\n")[0])
                self._close()
                return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.send(READY=1, **({"STATUS": one_line(status)} if status else {}))

    def status(self, text: str) -> bool:
        """STATUS=text, unless that is what systemd already shows."""
        line = one_line(text)
        if line == self._last_status:
            return False
        sent = self.send(STATUS=line)
        if sent:
            self._last_status = line
        return sent

    def watchdog(self) -> bool:
        return self.send(WATCHDOG=1)

    def reloading(self) -> bool:
        return self.send(RELOADING=1)

    def stopping(self, status: str | None = None) -> bool:
        return self.send(STOPPING=1, **({"STATUS": one_line(status)} if status else {}))

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
