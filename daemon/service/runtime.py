"""The dreamd process: lifecycle, the jobs' bodies, the control commands, the watchdog loop.

Threads: the main thread only sleeps, handles signals, checks health and pings the watchdog; the
scheduler's pool runs the jobs (a dream cycle waits there on its child process); the control
server answers dreamctl. Start-up order matters: the instance lock first (nothing may touch the
state dir before we know we are alone), then the database, the control socket, the scheduler
(whose first job is the inbox rescan), and READY=1 after that rescan, or after READY_WAIT seconds
of it: a large backlog goes on after READY (status shows it), so it cannot time out the start.

Health, for the watchdog, and when READY=1 is due: health.py. A dream cycle due while one runs
becomes one catch-up run after it. The control commands (dreamctl's side): commands.py.

Stopping (SIGTERM/SIGINT): STOPPING=1, the scheduler takes no new runs, mutating commands are
refused, a running child gets `stop_timeout_seconds` to finish and is then abandoned, the jobs are
joined, the socket removed, the lock released, exit 0. SIGHUP re-reads the config file; a bad
file is logged and the old settings stay. A rollback over the control socket abandons a running
child the same way but at once (only children move pointers), then moves `current` itself.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import sqlite3
import threading
import time
from typing import Any

import structlog

from dreamd.daemon.config import Config, ConfigError, load_config
from dreamd.daemon.loop import Stages
from dreamd.daemon.service import scheduler as jobs
from dreamd.daemon.service.child import ChildTarget
from dreamd.daemon.service.commands import handle_command
from dreamd.daemon.service.control import ControlServer, peer_allowed
from dreamd.daemon.service.health import IDLE_TICK, READY_WAIT, Health, Readiness
from dreamd.daemon.service.instance_lock import InstanceLock
from dreamd.daemon.service.jobs import ChildJobs
from dreamd.daemon.service.liveness import Liveness, StageProgress
from dreamd.daemon.service.logs import also_log_to_file, configure_logging
from dreamd.daemon.service.sd_notify import Notifier, watchdog_interval
from dreamd.daemon.service.state import (
    control_socket,
    link_socket_into_state,
    log_file,
    read_pause,
    service_file,
    write_json_atomic,
)
from dreamd.daemon.service.state_dir import StateLayout
from dreamd.daemon.service.status import collect_status, status_line
from dreamd.memory_graph.database.store import open_store
from dreamd.memory_graph.progress import LogProgress

log = structlog.get_logger("dreamd.service")

INGEST = "ingest"  # the ingest's stage name in liveness and status


class Service:
    def __init__(self, config: Config, layout: StateLayout, stages: Stages, config_path: str | None = None,
                 notifier: Notifier | None = None):
        self.config = config
        self.config_path = config_path
        self.layout = layout
        self.stages = stages
        self.notifier = notifier or Notifier()
        self.lock = InstanceLock(layout.lock_file)
        self.watchdog_every = watchdog_interval()
        self.health = Health(heartbeat_every=min(self.watchdog_every or 10.0, 10.0))
        self.readiness = Readiness()
        self.started = time.time()
        self.stopping = threading.Event()  # no new work; children get their stop timeout
        self._wake = threading.Event()  # main loop: a signal or the first scan arrived
        self._reload_requested = False
        self.liveness = Liveness()
        self.dream_runs = jobs.Coalesced()  # a cycle due while one runs: one catch-up after it
        self._state_lock = threading.Lock()
        self._busy: dict[str, float] = {}  # job id -> start time, while it runs
        self.children = ChildJobs()  # the cycle's and re-evaluation's child processes
        self._inbox_mtime: int | None = None
        self._new_messages = 0
        self.last_error: dict[str, Any] | None = None
        self.last_cycle: dict[str, Any] | None = None
        self.last_gate_decision: Any = None
        self.last_ingest: dict[str, Any] | None = None
        self.db: sqlite3.Connection | None = None
        self.scheduler = None
        self.control: ControlServer | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    def run(self) -> int:
        """Run until SIGTERM/SIGINT; returns the exit code. Raises AlreadyRunning if not alone."""
        self.layout.ensure()
        self.lock.acquire()
        try:
            self._add_log_file()
            self._install_signals()
            self._open_database()
            socket_path = control_socket(self.layout)
            self.control = ControlServer(socket_path, self.handle, self._allowed, self.config.daemon.control_group)
            self.control.start()
            link_socket_into_state(self.layout, socket_path)
            # The inbox watch's baseline is taken before the first scan: a file arriving after this
            # point is either seen by that scan or shows as a change to the watch.
            self._inbox_mtime = self._inbox_new_mtime()
            self.scheduler = jobs.build_scheduler(self._specs(), self._job_functions())
            self.scheduler.start()
            self.readiness.scheduler_started()
            self.save_state()
            log.info("dreamd started", pid=os.getpid(), state_dir=str(self.layout.root),
                     watchdog_every=self.watchdog_every, socket=str(socket_path))
            self._main_loop()
            return self._shutdown()
        finally:
            self.lock.release()

    def _main_loop(self) -> None:
        tick = self.watchdog_every or IDLE_TICK
        while not self.stopping.is_set():
            if self.readiness.becomes_ready():
                self.notifier.ready(self.summary())
                log.info("ready", first_scan_done=self.readiness.first_scan_done.is_set())
            if self._reload_requested:
                self._reload_requested = False
                self.reload()
            if self.healthy() and self.watchdog_every:
                self.notifier.watchdog()
            self.notifier.status(self.summary())
            self._wake.wait(tick if self.readiness.ready else min(tick, READY_WAIT))  # READY after READY_WAIT at most
            self._wake.clear()

    def _shutdown(self) -> int:
        log.info("stop requested")
        deadline = time.monotonic() + self.config.daemon.stop_timeout_seconds + 10
        self.notifier.stopping("stopping")
        log.info("stopping", busy=sorted(self._busy))
        self.save_state()
        clean = True
        if self.scheduler is not None:
            self.scheduler.pause()  # no new runs; running jobs see `stopping` and wind down
            # Wait for them here, not in shutdown(wait=True): APScheduler holds its job-store lock
            # while it waits, and a finishing job that touches the scheduler would deadlock on it.
            while self._busy and time.monotonic() < deadline:
                time.sleep(0.1)
            if self._busy:
                clean = False
                log.error("jobs did not finish within the stop timeout", busy=sorted(self._busy))
            self.scheduler.shutdown(wait=False)
        if self.control is not None:
            self.control.stop()
        if self.db is not None:
            self.db.close()
        self.save_state(phase="stopped")
        log.info("stopped", clean=clean)
        self.notifier.close()
        return 0 if clean else 1

    def _install_signals(self) -> None:
        # Handlers only set flags: the main loop acts on them (no logging or I/O in a handler).
        def stop(_signum, _frame):
            self.stopping.set()
            self._wake.set()

        def reload(_signum, _frame):
            self._reload_requested = True
            self._wake.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, reload)
        # `kill -USR1 <pid>` writes every thread's stack to stderr: how to see where a hung daemon
        # is stuck without a debugger.
        faulthandler.register(signal.SIGUSR1, all_threads=True)

    def _open_database(self) -> None:
        # The memory-graph store's own opener: WAL, busy timeout, migrations brought up to date.
        # The daemon keeps this connection only to know the database answers (READY, watchdog).
        self.db = open_store(self.layout.database).conn
        self.db.execute("SELECT count(*) FROM sqlite_master").fetchone()

    def _add_log_file(self) -> None:
        """Also keep the JSON log lines in the state dir, for `dreamctl logs` with or without journald."""
        # APScheduler logs every run of every job at info: the 2-second inbox watch would drown
        # the log. Its warnings (a run skipped or missed) still come through.
        if self.config.logging.level != "debug":
            logging.getLogger("apscheduler").setLevel(logging.WARNING)
        path = log_file(self.layout)
        path.parent.mkdir(mode=0o750, exist_ok=True)
        also_log_to_file(path)

    # --- health, state, summary ----------------------------------------------------------------

    def healthy(self) -> bool:
        """What the watchdog ping vouches for: see health.py."""
        return self.health.check(self.scheduler, self.db, self.liveness, self.config.daemon.stall_seconds,
                                 self._error)

    def phase(self) -> str:
        if self.stopping.is_set():
            return "stopping"
        if not self.readiness.ready:
            return "starting"
        for job, name in ((jobs.DREAM_CYCLE, "dreaming"), (jobs.REEVALUATE, "re-evaluating"),
                          (jobs.INBOX_SCAN, "ingesting")):
            if job in self._busy:
                return name
        return "paused" if read_pause(self.layout) else "idle"

    def live(self) -> dict[str, Any]:
        with self._state_lock:  # job threads change it while the control thread reads
            busy = sorted(self._busy)
        return {
            "pid": os.getpid(), "phase": self.phase(), "uptime_s": round(time.time() - self.started, 1),
            "busy": busy, "child_pid": self.children.child_pid,
            "next_runs": jobs.next_runs(self.scheduler) if self.scheduler and not self.stopping.is_set() else {},
            "last_error": self.last_error, "last_cycle": self.last_cycle, "last_ingest": self.last_ingest,
            "last_gate_decision": self.last_gate_decision, "new_messages_since_cycle": self._new_messages,
            "stages": self.liveness.snapshot(self.config.daemon.stall_seconds),
            "config_file": str(self.config.source) if self.config.source else None,
        }

    def status(self) -> dict[str, Any]:
        live = self.live()
        extra = ("uptime_s", "busy", "child_pid", "last_ingest", "new_messages_since_cycle", "config_file", "stages")
        return {**collect_status(self.layout, live), **{key: live[key] for key in extra}}

    def summary(self) -> str:
        return status_line(collect_status(self.layout, self.live()))

    def busy_jobs(self) -> list[str]:
        return sorted(self._busy)

    def save_state(self, phase: str | None = None) -> None:
        data = {**self.live(), "updated": time.time()}
        if phase:
            data["phase"] = phase
        try:
            write_json_atomic(service_file(self.layout), data)
        except OSError as exc:
            log.warning("cannot write service state", error=str(exc))

    def _error(self, where: str, error: Any) -> None:
        self.last_error = {"where": where, "error": str(error), "at": time.time()}
        log.error("error", where=where, error=str(error))

    def _set_busy(self, job_id: str, busy: bool) -> None:
        with self._state_lock:
            if busy:
                self._busy[job_id] = time.time()
            else:
                self._busy.pop(job_id, None)
        self.save_state()
        self.notifier.status(self.summary())

    # --- jobs ----------------------------------------------------------------------------------

    def _specs(self) -> list[jobs.JobSpec]:
        return jobs.job_specs(self.config.daemon, self.health.heartbeat_every)

    def _job_functions(self) -> dict[str, Any]:
        return {jobs.INBOX_SCAN: self.scan_inbox, jobs.INBOX_WATCH: self.watch_inbox,
                jobs.DREAM_CYCLE: self.dream_cycle, jobs.REEVALUATE: self.reevaluate,
                jobs.HEARTBEAT: self.health.beat}

    def _inbox_new_mtime(self) -> int | None:
        try:
            return self.layout.inbox_folder("new").stat().st_mtime_ns
        except OSError:
            return None

    def watch_inbox(self) -> None:
        """One stat() of inbox/new; a change makes the inbox scan due now."""
        mtime = self._inbox_new_mtime()
        if mtime != self._inbox_mtime and not self.stopping.is_set():
            jobs.run_now(self.scheduler, jobs.INBOX_SCAN)
        self._inbox_mtime = mtime

    def scan_inbox(self) -> None:
        if self.stopping.is_set():
            return
        try:
            waiting = any(any(os.scandir(self.layout.inbox_folder(f))) for f in ("new", "processing"))
            if not waiting:
                return
            self._set_busy(jobs.INBOX_SCAN, True)
            self.liveness.begin(INGEST, "scanning")
            progress = StageProgress(self.liveness, INGEST, LogProgress(self.config.inbox.progress_seconds))
            result = self.stages.ingest(self.config, self.layout, progress=progress) or {}
            self.last_ingest = {**result, "at": time.time()}
            held = result.get("stuck") or result.get("held_back")
            if not held and any(os.scandir(self.layout.inbox_folder("new"))):
                # Files not yet taken (still being written: inbox.stable_seconds): look again soon
                # rather than at the next interval (not when one is held back: no busy loop on it).
                jobs.run_now(self.scheduler, jobs.INBOX_SCAN, delay=max(0.5, self.config.inbox.stable_seconds))
            self._new_messages += int(result.get("messages", 0) or 0)
            if jobs.should_dream_early(self._new_messages, self.config.daemon.dream_after_new_messages):
                log.info("enough new material: dream cycle due now", new_messages=self._new_messages)
                jobs.run_now(self.scheduler, jobs.DREAM_CYCLE)
        except Exception as exc:  # a bad file must not stop the scanning; the ingester quarantines
            self._error(jobs.INBOX_SCAN, exc)
        finally:
            self.liveness.end(INGEST)
            if jobs.INBOX_SCAN in self._busy:
                self._set_busy(jobs.INBOX_SCAN, False)
            self.readiness.first_scan_done.set()
            self._wake.set()

    def dream_cycle(self) -> None:
        """The dream-cycle job. Due while one runs (the timer, enough new messages): recorded, and
        run once after it, however many times it came due meanwhile."""
        if not self.dream_runs.enter():
            log.info("dream cycle due while one runs: one catch-up run follows it")
            return
        while True:
            try:
                self._in_child(jobs.DREAM_CYCLE, self.stages.cycle)
            finally:
                again = self.dream_runs.again() and not self.stopping.is_set()
            if not again:
                return
            log.info("catch-up dream cycle")

    def reevaluate(self) -> None:
        if self.stages.reevaluate is None:  # stages without one (the tests' scripted fakes)
            return
        self._in_child(jobs.REEVALUATE, self.stages.reevaluate)

    def _in_child(self, job_id: str, target: ChildTarget) -> None:
        if self.stopping.is_set():
            return
        if read_pause(self.layout):
            log.info("paused; skipped", job=job_id)
            return
        self._set_busy(job_id, True)
        self.liveness.begin(job_id, "starting its child")
        started = time.time()
        try:
            outcome = self.children.run(
                job_id, target, (self.config.to_dict(), str(self.layout.root)), stop=self.stopping,
                stop_timeout=self.config.daemon.stop_timeout_seconds, log_level=self.config.logging.level,
                log_path=str(log_file(self.layout)),
                on_progress=lambda what: self.liveness.progress(job_id, what),
            )
            if outcome is None:
                log.info("a rollback is under way; skipped", job=job_id)
                return
            record = {"job": job_id, "started": started, **outcome.to_dict()}
            if job_id == jobs.DREAM_CYCLE:
                self.last_cycle = record
                self._new_messages = 0
                if outcome.result and "gate" in outcome.result:
                    self.last_gate_decision = outcome.result["gate"]
            if outcome.status == "failed":
                self._error(job_id, outcome.error)
            log.info("job done", job=job_id, status=outcome.status, seconds=round(outcome.seconds, 2),
                     outcome=(outcome.result or {}).get("outcome"))
        except Exception as exc:
            self._error(job_id, exc)
        finally:
            self.liveness.end(job_id)
            self._set_busy(job_id, False)

    # --- control commands ----------------------------------------------------------------------

    def _allowed(self, cred) -> bool:
        return peer_allowed(cred, os.geteuid(), self.config.daemon.control_group)

    def handle(self, cmd: str, args: dict[str, Any], peer=None) -> dict[str, Any]:
        """The control server's handler: commands.py."""
        return handle_command(self, cmd, args, peer)

    def reload(self) -> dict[str, Any]:
        """Re-read the config file; on any error keep the settings in force."""
        self.notifier.reloading()
        try:
            config = load_config(self.config_path)
        except ConfigError as exc:
            self._error("reload", f"config error: {exc}; keeping the old settings")
            self.notifier.ready(self.summary())
            return {"reloaded": False, "error": f"config error: {exc}"}
        self.config = config
        configure_logging("json", config.logging.level)
        self._add_log_file()
        changed = jobs.apply_specs(self.scheduler, self._specs(), self._job_functions())
        log.info("config reloaded", source=str(config.source), jobs_changed=changed)
        self.notifier.ready(self.summary())
        return {"reloaded": True, "jobs_changed": changed}
