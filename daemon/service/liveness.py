"""Which long stage runs and when it last made progress: what the watchdog and `dreamctl status` see.

A heartbeat only proves that the scheduler dispatches; a stage stuck inside one file (a read
that never returns, a child that deadlocked) leaves the heartbeat beating. So each long stage
reports progress here (the ingester at every file it turns to, the cycle's child at every log
event it writes) and the health check fails once one has made none for `stall_seconds`: the
daemon stops pinging, and systemd's watchdog restarts it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass


@dataclass
class Stage:
    name: str
    detail: str
    started: float  # wall clock, for status
    progressed: float  # monotonic
    progressed_at: float  # wall clock, for status


class Liveness:
    def __init__(self, clock=time.monotonic, wall=time.time):
        self.clock, self.wall = clock, wall
        self._stages: dict[str, Stage] = {}
        self._lock = threading.Lock()  # job threads report, the main and control threads read

    def begin(self, name: str, detail: str = "") -> None:
        now, wall = self.clock(), self.wall()
        with self._lock:
            self._stages[name] = Stage(name, detail, wall, now, wall)

    def progress(self, name: str, detail: str | None = None) -> None:
        with self._lock:
            stage = self._stages.get(name)
            if stage is None:
                return
            stage.progressed, stage.progressed_at = self.clock(), self.wall()
            if detail is not None:
                stage.detail = detail

    def end(self, name: str) -> None:
        with self._lock:
            self._stages.pop(name, None)

    def stalled(self, limit_seconds: float) -> list[str]:
        """The stages that made no progress for more than `limit_seconds`."""
        now = self.clock()
        with self._lock:
            return sorted(s.name for s in self._stages.values() if now - s.progressed > limit_seconds)

    def snapshot(self, limit_seconds: float) -> dict[str, dict]:
        """For status: each running stage, what it works on, and how long since its last progress."""
        now = self.clock()
        with self._lock:
            return {s.name: {"detail": s.detail, "started": s.started, "last_progress": s.progressed_at,
                             "idle_s": round(now - s.progressed, 1), "stalled": now - s.progressed > limit_seconds}
                    for s in self._stages.values()}


class StageProgress:
    """memory_graph's Progress, reporting to a Liveness (and to another Progress, the log)."""

    def __init__(self, liveness: Liveness, name: str, inner=None):
        self.liveness, self.name, self.inner = liveness, name, inner
        self.total = self.done = 0

    def start(self, files: int) -> None:
        self.total = files
        self.liveness.progress(self.name, f"0/{files} files")
        if self.inner:
            self.inner.start(files)

    def working_on(self, what: str) -> None:
        self.liveness.progress(self.name, f"{self.done}/{self.total} files: {what}")
        if self.inner:
            self.inner.working_on(what)

    def advance(self, files: int, messages: int = 0) -> None:
        self.done += files
        self.liveness.progress(self.name, f"{self.done}/{self.total} files")
        if self.inner:
            self.inner.advance(files, messages)

    def finish(self, report) -> None:
        if self.inner:
            self.inner.finish(report)
