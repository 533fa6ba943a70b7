"""When dreamd may tell systemd READY=1, and whether it is healthy enough to ping the watchdog.

Ready: after the first inbox scan, or READY_WAIT seconds after the scheduler started, whichever
comes first: a large backlog goes on after READY (status shows it), so it cannot time out the start.

Healthy: the scheduler runs and dispatches (its heartbeat job is fresh), the database answers, and
no long stage (ingest, the cycle's child) has gone `daemon.stall_seconds` without progress
(liveness.py). An unhealthy daemon stops pinging, and systemd restarts it once WatchdogSec passes.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog

from dreamd.daemon.service.liveness import Liveness

log = structlog.get_logger("dreamd.service")

IDLE_TICK = 30.0  # main loop wake-up when systemd wants no watchdog pings
READY_WAIT = 5.0  # seconds of the first inbox scan READY=1 waits for; a backlog goes on after it


class Readiness:
    """READY=1 once: after the first inbox scan or READY_WAIT seconds of it."""

    def __init__(self) -> None:
        self.ready = False
        self.first_scan_done = threading.Event()  # set by the scan job, from its thread
        self._scheduler_started = float("inf")

    def scheduler_started(self) -> None:
        self._scheduler_started = time.monotonic()

    def becomes_ready(self) -> bool:
        """True once, at the first call that finds READY=1 due; the caller then says it."""
        if not self.ready and (self.first_scan_done.is_set()
                               or time.monotonic() - self._scheduler_started >= READY_WAIT):
            self.ready = True
            return True
        return False


class Health:
    """The watchdog's checks, and the scheduler heartbeat that one of them reads."""

    def __init__(self, heartbeat_every: float):
        self.heartbeat_every = heartbeat_every
        self.last_heartbeat = time.monotonic()
        self._stall_logged: set[str] = set()

    def beat(self) -> None:
        """The heartbeat job: it runs only if the scheduler still dispatches."""
        self.last_heartbeat = time.monotonic()

    def check(self, scheduler, db: sqlite3.Connection | None, liveness: Liveness, stall_seconds: float,
              on_error: Callable[[str, Any], None]) -> bool:
        """The scheduler runs and dispatches (its heartbeat is fresh), no long stage has stopped
        making progress, and the database answers. `on_error` records why not."""
        if scheduler is None or not scheduler.running:
            return False
        if time.monotonic() - self.last_heartbeat > 3 * self.heartbeat_every + 5:
            log.warning("scheduler heartbeat is late; not pinging the watchdog")
            return False
        stalled = liveness.stalled(stall_seconds)
        for name in set(stalled) - self._stall_logged:  # once per stall, not at every tick
            on_error(name, f"no progress for over {stall_seconds:.0f} s "
                           f"({liveness.snapshot(0).get(name, {}).get('detail')}); not pinging the watchdog")
        self._stall_logged = set(stalled)
        if stalled:
            return False
        try:
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.Error as exc:
            on_error("database", exc)
            return False
        return True
