"""The daemon's child-process jobs (dream cycle, re-evaluation) and the rollback's hold on them.

The checkpoint pointers move only in a child's promote (or re-evaluation) step, or in a rollback.
So a rollback holds the pointers still by abandoning every child that runs (SIGTERM, then SIGKILL,
the way a stop does) and letting no new one start until it is done. The lock below is what makes
that race-free: a child either registers before the rollback looks (and is abandoned by it) or
sees the hold and does not start.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import structlog

from dreamd.daemon.service.child import TERM_GRACE, ChildOutcome, ChildTarget, run_in_child

log = structlog.get_logger("dreamd.service")

ABANDON_WAIT = TERM_GRACE + 10  # seconds an abandoned child gets to be gone (SIGKILL comes at TERM_GRACE)


class ChildrenBusy(RuntimeError):
    """A child did not stop when abandoned for a rollback."""


class ChildJobs:
    def __init__(self):
        self._lock = threading.Lock()  # guards _held and _aborts together
        self._held = False  # a rollback holds the pointers: no child starts
        self._one_hold = threading.Lock()  # one rollback at a time
        self._aborts: dict[str, threading.Event] = {}  # job id -> abandons its child, while one runs
        self.outcomes: dict[str, str] = {}  # job id -> how its last child run ended
        self.child_pid: int | None = None

    def run(self, job_id: str, target: ChildTarget, args: tuple, **child_options: Any) -> ChildOutcome | None:
        """Run `target` in a child process for `job_id` (run_in_child's options); None, and no
        child, while a rollback holds the pointers."""
        abort = threading.Event()
        with self._lock:
            if self._held:
                return None
            self._aborts[job_id] = abort
        try:
            outcome = run_in_child(target, args, abort=abort,
                                   on_start=lambda pid: setattr(self, "child_pid", pid), **child_options)
            if outcome.status == "abandoned" and abort.is_set():
                outcome.error = "abandoned for a rollback"
            self.outcomes[job_id] = outcome.status
            return outcome
        finally:
            with self._lock:
                self._aborts.pop(job_id, None)
            self.child_pid = None

    @contextlib.contextmanager
    def held(self) -> Iterator[dict[str, str | None]]:
        """Within: no child runs. Children that ran are abandoned first; yields {job id: how it
        ended} for them. Raises ChildrenBusy if one has not stopped within the grace period."""
        with self._one_hold:
            with self._lock:
                self._held = True
                running = dict(self._aborts)
            try:
                for job_id, abort in running.items():
                    log.warning("abandoning a running job for a rollback", job=job_id, child_pid=self.child_pid)
                    abort.set()
                deadline = time.monotonic() + ABANDON_WAIT
                while any(job_id in self._aborts for job_id in running):
                    if time.monotonic() > deadline:
                        raise ChildrenBusy(f"{', '.join(running)} did not stop")
                    time.sleep(0.05)
                yield {job_id: self.outcomes.get(job_id) for job_id in running}
            finally:
                with self._lock:
                    self._held = False
