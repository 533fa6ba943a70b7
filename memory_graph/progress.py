"""Progress through a backlog: structured log lines for the daemon; the CLI brings its own bar.

`working_on` is called whenever the ingester turns to the next file (or batch): it is what the
daemon's watchdog watches, so a file that hangs shows as a stage that stopped making progress.
"""

from __future__ import annotations

import time
from typing import Protocol

import structlog

log = structlog.get_logger("dreamd.ingest")


class Progress(Protocol):
    def start(self, files: int) -> None: ...
    def working_on(self, what: str) -> None: ...
    def advance(self, files: int, messages: int = 0) -> None: ...
    def finish(self, report) -> None: ...


class LogProgress:
    """One `ingest.progress` line every `every` seconds while files remain, and one at the end."""

    def __init__(self, every: float, clock=time.monotonic):
        self.every, self.clock = every, clock
        self.total = self.done = self.messages = 0
        self.started = self.last = 0.0
        self.current = ""

    def start(self, files: int) -> None:
        self.total, self.started = files, self.clock()
        self.last = self.started
        if files:
            log.info("ingest.start", files=files)

    def working_on(self, what: str) -> None:
        self.current = what

    def advance(self, files: int, messages: int = 0) -> None:
        self.done += files
        self.messages += messages
        now = self.clock()
        if now - self.last >= self.every:
            self.last = now
            elapsed = max(now - self.started, 1e-9)
            log.info("ingest.progress", files_done=self.done, files_total=self.total, messages=self.messages,
                     msgs_per_s=round(self.messages / elapsed, 1))

    def finish(self, report) -> None:
        if self.total:
            log.info("ingest.done", files=report.files, ingested=report.ingested, duplicates=report.duplicates,
                     quarantined=report.quarantined, messages=report.messages, seconds=round(report.seconds, 2))
