"""The daemon's jobs and when they run, on APScheduler 3's BackgroundScheduler.

Job ids are fixed (the control channel and `dreamctl status` name them):

- `inbox-scan`   ingest what is in the inbox: at start, every `inbox_scan_seconds`, and at once
                 when `inbox-watch` sees `inbox/new/` change;
- `inbox-watch`  one stat() of `inbox/new/` every `inbox_poll_seconds` (no inotify: it works on
                 every filesystem, including network mounts, at no measurable cost);
- `dream-cycle`  every `dream_interval_minutes`, or early once `dream_after_new_messages` new
                 messages arrived, or on `dreamctl dream --now`;
- `re-evaluate`  every `reevaluate_hours`;
- `heartbeat`    proves the scheduler still dispatches jobs; the watchdog is pinged only while it
                 beats.

Every job has coalesce=True (a backlog of missed runs becomes one run), and a misfire grace so a
run delayed by a long job or a suspended machine still happens. Every job but the dream cycle has
max_instances=1; APScheduler drops a run that comes due while its job runs, which for the dream
cycle would lose the early start that new messages asked for. So the dream cycle may start a
second instance, which only tells the running one (`Coalesced`) to run once more when it ends.
What to schedule is a pure function of the settings (`job_specs`), tested without a scheduler.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from dreamd.daemon.service.settings import DaemonSettings

INBOX_SCAN = "inbox-scan"
INBOX_WATCH = "inbox-watch"
DREAM_CYCLE = "dream-cycle"
REEVALUATE = "re-evaluate"
HEARTBEAT = "heartbeat"
JOB_IDS = (INBOX_SCAN, INBOX_WATCH, DREAM_CYCLE, REEVALUATE, HEARTBEAT)


@dataclass(frozen=True)
class JobSpec:
    id: str
    seconds: float
    first_run_in: float | None  # seconds from now; None: one interval from now
    options: dict[str, Any] = field(default_factory=dict)


def job_specs(settings: DaemonSettings, heartbeat_seconds: float) -> list[JobSpec]:
    """Which jobs run and how often. The inbox scan runs at once at start (READY waits for it)."""
    common = {"max_instances": 1, "coalesce": True, "misfire_grace_time": settings.misfire_grace_seconds}
    specs = [
        JobSpec(INBOX_SCAN, settings.inbox_scan_seconds, 0.0, common),
        JobSpec(DREAM_CYCLE, settings.dream_interval_minutes * 60, None, {**common, "max_instances": 2}),
        JobSpec(REEVALUATE, settings.reevaluate_hours * 3600, None, common),
        JobSpec(HEARTBEAT, heartbeat_seconds, None, {**common, "misfire_grace_time": None}),
    ]
    if settings.inbox_poll_seconds > 0:
        specs.append(JobSpec(INBOX_WATCH, settings.inbox_poll_seconds, None, common))
    return specs


class Coalesced:
    """One run at a time; runs asked for while one is under way become exactly one run after it."""

    def __init__(self):
        self._lock = threading.Lock()
        self._running = self._pending = False

    def enter(self) -> bool:
        """True: run now (call `again` when done). False: one is running; it will run once more."""
        with self._lock:
            if self._running:
                self._pending = True
                return False
            self._running = True
            return True

    def again(self) -> bool:
        """The run ended: True if it should run once more (the catch-up), else it is released."""
        with self._lock:
            if self._pending:
                self._pending = False
                return True
            self._running = False
            return False


def should_dream_early(new_messages: int, threshold: int) -> bool:
    """Enough new material since the last cycle to start the next one now?"""
    return threshold > 0 and new_messages >= threshold


def build_scheduler(specs: list[JobSpec], functions: dict[str, Callable[[], None]]) -> BackgroundScheduler:
    """A scheduler with one job per spec (not started). `functions` maps job id to its callable."""
    # One worker per job: max_instances=1 already bounds each job, and a long dream cycle must
    # never keep the heartbeat (the watchdog's proof of life) or the inbox scan waiting.
    scheduler = BackgroundScheduler(
        executors={"default": ThreadPoolExecutor(max_workers=len(JOB_IDS) + 1)},
        timezone=UTC,
    )
    now = datetime.now(UTC)
    for spec in specs:
        first = now + timedelta(seconds=spec.seconds if spec.first_run_in is None else spec.first_run_in)
        scheduler.add_job(functions[spec.id], "interval", seconds=spec.seconds, id=spec.id, name=spec.id,
                          next_run_time=first, replace_existing=True, **spec.options)
    return scheduler


def apply_specs(scheduler: BackgroundScheduler, specs: list[JobSpec],
                functions: dict[str, Callable[[], None]]) -> list[str]:
    """Bring a running scheduler in line with new settings (SIGHUP); returns the jobs changed."""
    changed = []
    wanted = {spec.id: spec for spec in specs}
    for job in scheduler.get_jobs():
        if job.id not in wanted:
            scheduler.remove_job(job.id)
            changed.append(job.id)
    for spec in specs:
        job = scheduler.get_job(spec.id)
        if job is None:
            first = datetime.now(UTC) + timedelta(seconds=spec.seconds)
            scheduler.add_job(functions[spec.id], "interval", seconds=spec.seconds, id=spec.id, name=spec.id,
                              next_run_time=first, **spec.options)
            changed.append(spec.id)
            continue
        if job.trigger.interval.total_seconds() != spec.seconds:
            scheduler.reschedule_job(spec.id, trigger="interval", seconds=spec.seconds)
            changed.append(spec.id)
        if job.misfire_grace_time != spec.options.get("misfire_grace_time"):
            scheduler.modify_job(spec.id, misfire_grace_time=spec.options.get("misfire_grace_time"))
            changed.append(spec.id)
    return sorted(set(changed))


def run_now(scheduler: BackgroundScheduler, job_id: str, delay: float = 0.0) -> bool:
    """Make a job due now, or in `delay` seconds (its interval restarts from that run).
    False if it does not exist."""
    if scheduler.get_job(job_id) is None:
        return False
    scheduler.modify_job(job_id, next_run_time=datetime.now(UTC) + timedelta(seconds=delay))
    return True


def next_runs(scheduler: BackgroundScheduler) -> dict[str, str | None]:
    """Each job's next run time (ISO 8601, UTC), heartbeat and watch left out."""
    return {
        job.id: job.next_run_time.isoformat() if job.next_run_time else None
        for job in scheduler.get_jobs()
        if job.id not in (HEARTBEAT, INBOX_WATCH)
    }
