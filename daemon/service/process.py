"""A `dreamd` child process: started with its output in a log file, watched, and stopped.

`dreamctl demo` runs the real daemon this way, and so do the service tests (with an environment of
their own: a fake systemd's $NOTIFY_SOCKET, scripted stages). Stopping is what systemd does:
SIGTERM, then SIGKILL if the daemon has not gone in time.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from dreamd.daemon.service.state import tail_lines

LOG_TAIL_LINES = 15  # of the daemon's log, quoted when it died: usually the traceback's end


class DaemonExited(RuntimeError):
    """dreamd exited while it was expected to run."""


def dreamd_command() -> list[str]:
    """The `dreamd` beside this Python (the venv's script), else the module itself."""
    script = Path(sys.executable).with_name("dreamd")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "dreamd.daemon.cli.dreamd"]


class DreamdProcess:
    """`dreamd <arguments>` as a child, its stdout and stderr appended to `log_path`.

    `start()` may be called again once it has exited (a restart on the same state dir, as after a
    crash): the log file is appended to, and `new_events()` reads from the new start on.
    """

    def __init__(self, arguments: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None,
                 cwd: Path | None = None):
        self.arguments = list(arguments)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None  # None: this process's environment
        self.cwd = cwd
        self.popen: subprocess.Popen | None = None
        self._log_offset = 0

    def start(self) -> DreamdProcess:
        self.log_path.parent.mkdir(mode=0o750, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._log_offset = log.tell()
            # Same process group: a Ctrl-C in the terminal reaches dreamd too, which stops on SIGINT.
            self.popen = subprocess.Popen([*dreamd_command(), *self.arguments], env=self.env, cwd=self.cwd,
                                          stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        return self

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    @property
    def returncode(self) -> int | None:
        """The exit code once it has exited (negative: the signal that killed it), else None."""
        return self.popen.poll() if self.popen is not None else None

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def check_alive(self) -> None:
        """Raise DaemonExited, quoting the end of its log, if it was started and has exited."""
        if self.popen is not None and self.popen.poll() is not None:
            raise DaemonExited(f"dreamd exited with code {self.popen.returncode}; its log: {self.log_path}\n"
                               + self.log_tail())

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return "\n".join(tail_lines(self.log_path, lines))

    def new_events(self) -> list[str]:
        """The `event` of each JSON log line it (and its cycle's child) wrote since the last call."""
        if self.popen is None:
            return []
        try:
            with open(self.log_path, "rb") as handle:
                handle.seek(self._log_offset)
                data = handle.read()
        except OSError:
            return []
        complete = data.rfind(b"\n") + 1  # a line still being written is read next time
        self._log_offset += complete
        events = []
        for line in data[:complete].splitlines():
            try:
                events.append(json.loads(line)["event"])
            except (ValueError, KeyError, TypeError):
                continue
        return events

    def stop(self, timeout: float) -> int | None:
        """SIGTERM and wait for it; SIGKILL if it is still there after `timeout` seconds.
        Returns the exit code (None if it was never started)."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode
