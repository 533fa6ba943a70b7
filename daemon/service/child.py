"""Long work (generation, training, evaluation) runs in a child process, never in the daemon.

Why a child: a training round holds the GIL for long stretches and can use gigabytes; in the
daemon's own process it would starve the control socket and the watchdog, and a crash (OOM,
a CUDA fault) would take the service down with it. In a child, the daemon stays responsive,
survives the crash and records it, and can abandon the work on shutdown.

The child is started with the *spawn* method (a fresh interpreter): forking a process that runs
threads (the scheduler, the control server) can copy a held lock into the child and deadlock it,
and CUDA cannot be used after fork. The target is a module-level function: spawn pickles it by
reference (its module and name), so the child imports that module itself and nothing unpicklable
crosses the boundary; arguments and the result are plain data. What the module imports is paid in
the child, never in the daemon, as long as the daemon only holds the function of a light module.

The child asks the kernel to kill it if the daemon dies (PR_SET_PDEATHSIG): a SIGKILLed daemon
must not leave an orphan training run behind that a restarted daemon would race.

Progress: every log line the child writes (its own events and its libraries'), and every
`report_progress` call, is also sent to the daemon (at most one a second) as ("progress", what),
so the daemon's watchdog can tell a long step that moves from one that hangs.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger("dreamd.child")

PR_SET_PDEATHSIG = 1
TERM_GRACE = 5.0  # after SIGTERM, seconds before SIGKILL
PROGRESS_EVERY = 1.0  # seconds between progress messages sent to the daemon


class _ToDaemon:
    """The child's end of the pipe, shared by the threads that log and the final result."""

    def __init__(self, conn):
        self.conn, self.lock, self.last = conn, threading.Lock(), 0.0

    def send(self, message: tuple) -> None:
        with self.lock:
            self.conn.send(message)

    def progress(self, what: str) -> None:
        now = time.monotonic()
        if now - self.last < PROGRESS_EVERY:
            return
        self.last = now
        try:
            self.send(("progress", what[:160]))
        except (OSError, ValueError):  # the daemon is gone or closed its end: nothing to tell
            pass


_to_daemon: _ToDaemon | None = None  # set in the child only


def report_progress(what: str) -> None:
    """Tell the daemon this child still makes progress (a no-op outside a daemon's child)."""
    if _to_daemon is not None:
        _to_daemon.progress(what)


class _ProgressHandler(logging.Handler):
    """Every log record the child writes counts as progress."""

    def emit(self, record: logging.LogRecord) -> None:
        event = record.msg.get("event") if isinstance(record.msg, dict) else record.getMessage()
        report_progress(str(event))


@dataclass
class ChildOutcome:
    status: str  # "ok", "failed" (raised or died) or "abandoned" (stopped on shutdown)
    result: dict[str, Any] | None
    error: str | None
    seconds: float
    exitcode: int | None

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "result": self.result, "error": self.error,
                "seconds": round(self.seconds, 3), "exitcode": self.exitcode}


ChildTarget = Callable[..., Any]  # a module-level function: spawn pickles it by reference


def target_name(target: ChildTarget) -> str:
    """`module:function`, for the log."""
    return f"{target.__module__}:{target.__qualname__}"


def _child_main(target: ChildTarget, args: tuple, conn, parent_pid: int, log_level: str, log_path: str | None) -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)
    # The daemon decides when we stop: a Ctrl-C in a terminal or a reload is for it, not for us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from dreamd.daemon.service.logs import also_log_to_file, configure_logging

    configure_logging("json", log_level)
    if log_path:  # the daemon's log file too, so `dreamctl logs` shows the cycle's own events
        try:
            also_log_to_file(Path(log_path), rotate=False)
        except OSError as exc:  # no log folder (a daemon without one): stderr still has it all
            structlog.get_logger("dreamd.child").warning("cannot write the log file", path=log_path, error=str(exc))
    global _to_daemon
    _to_daemon = _ToDaemon(conn)
    logging.getLogger().addHandler(_ProgressHandler())
    try:
        result = target(*args)
        _to_daemon.send(("ok", result if isinstance(result, dict) else {"value": result}))
    except BaseException as exc:  # report everything, including SystemExit from a stage
        _to_daemon.send(("error", "".join(traceback.format_exception_only(type(exc), exc)).strip(),
                         traceback.format_exc()))
    finally:
        conn.close()


def run_in_child(
    target: ChildTarget,
    args: tuple = (),
    stop: threading.Event | None = None,
    stop_timeout: float = 60.0,
    log_level: str = "info",
    on_start: Callable[[int], None] | None = None,
    abort: threading.Event | None = None,
    log_path: str | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> ChildOutcome:
    """Run `target(*args)` in a spawned child and wait for its dict result.

    When `stop` is set while the child runs, it gets `stop_timeout` seconds to finish; then it is
    sent SIGTERM, and SIGKILL TERM_GRACE seconds later, and the outcome is "abandoned". `abort`
    does the same without the wait (a rollback must not wait for a cycle to finish). Stages
    write with rename-into-place, so an abandoned step leaves nothing half-written behind.
    `on_progress(what)` is called for each progress message the child sends.
    """
    ctx = multiprocessing.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child_main, args=(target, args, sender, os.getpid(), log_level, log_path),
                          name=f"dreamd-{target.__name__}", daemon=False)
    started = time.monotonic()
    process.start()
    sender.close()  # the child holds the only write end: EOF on the pipe means it is gone
    if on_start:
        on_start(process.pid)
    message, deadline = None, None
    while True:
        # Wake on the result, the child's death, or every 0.5 s to look at `stop` and `abort`; this
        # polling happens only while a child runs, never when the daemon is idle.
        ready = multiprocessing.connection.wait([receiver, process.sentinel], timeout=0.5)
        if receiver in ready:
            try:
                message = receiver.recv()
            except EOFError:
                message = None
            if message and message[0] == "progress":
                if on_progress:
                    on_progress(message[1])
                message = None
                continue
            break
        if process.sentinel in ready:
            break
        if abort is not None and abort.is_set():
            _terminate(process)
            return ChildOutcome("abandoned", None, "abandoned on request", time.monotonic() - started,
                                process.exitcode)
        if stop is not None and stop.is_set():
            deadline = deadline or time.monotonic() + stop_timeout
            if time.monotonic() >= deadline:
                _terminate(process)
                return ChildOutcome("abandoned", None, f"stopped after {stop_timeout:.0f} s on shutdown",
                                    time.monotonic() - started, process.exitcode)
    process.join(TERM_GRACE)
    if process.is_alive():
        _terminate(process)
    receiver.close()
    seconds = time.monotonic() - started
    if message and message[0] == "ok":
        return ChildOutcome("ok", message[1], None, seconds, process.exitcode)
    if message:
        log.error("child failed", target=target_name(target), error=message[1], traceback=message[2])
        return ChildOutcome("failed", None, message[1], seconds, process.exitcode)
    return ChildOutcome("failed", None, f"child exited with code {process.exitcode} without a result",
                        seconds, process.exitcode)


def _terminate(process) -> None:
    process.terminate()
    process.join(TERM_GRACE)
    if process.is_alive():
        process.kill()
        process.join()
