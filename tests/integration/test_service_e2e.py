"""The real `dreamd` as a subprocess, with a datagram socket standing in for systemd.

The stages are scripted fakes (tests/service_fakes.py): the cycle still runs in dreamd's child
process, so stopping and killing in the middle of one is the real thing.
"""

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CONFIG = """
[daemon]
inbox_poll_seconds = 0.2
stop_timeout_seconds = {stop_timeout}
dream_interval_minutes = 60
"""


class Daemon:
    def __init__(self, tmp_path: Path, cycle_seconds: float = 0.2, stop_timeout: float = 3.0):
        self.tmp = tmp_path
        self.state = tmp_path / "state"
        self.config = tmp_path / "dreamd.toml"
        self.config.write_text(CONFIG.format(stop_timeout=stop_timeout))
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(tmp_path / "notify.sock"))
        self.received: queue.Queue[str] = queue.Queue()  # drained at once, as systemd would
        threading.Thread(target=self._listen, daemon=True).start()
        self.messages: list[str] = []
        self.env = {**os.environ, "DREAMD_STATE_DIR": str(self.state), "DREAMD_CONFIG": str(self.config),
                    "NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "1000000",
                    "PYTHONPATH": str(REPO), "DREAMD_FAKE_CYCLE_SECONDS": str(cycle_seconds)}
        self.env.pop("WATCHDOG_PID", None)
        self.proc = None

    def start(self) -> "Daemon":
        self.log = open(self.tmp / "dreamd.stderr", "a")
        self.proc = subprocess.Popen([str(BIN / "dreamd"), "--stages", "tests.service_fakes:build"],
                                     env=self.env, cwd=self.tmp, stderr=self.log)
        return self

    def _listen(self) -> None:
        while True:
            try:
                self.received.put(self.notify.recv(4096).decode())
            except OSError:
                return

    def wait_for(self, line: str, timeout: float = 20.0) -> str:
        """Take notify datagrams until one holds `line`; returns that datagram."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                message = self.received.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            self.messages.append(message)
            if line in message.split("\n"):
                return message
        raise AssertionError(f"no {line} from dreamd in {timeout} s; got {self.messages[-5:]}\n{self.stderr()}")

    def ctl(self, *args, check=True):
        done = subprocess.run([str(BIN / "dreamctl"), *args], env=self.env, cwd=self.tmp,
                              capture_output=True, text=True, timeout=30)
        if check:
            assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done

    def status(self) -> dict:
        return json.loads(self.ctl("status", "--json").stdout)

    def until(self, predicate, timeout: float = 15.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status()
            if predicate(status):
                return status
            time.sleep(0.2)
        raise AssertionError(f"condition not met; last status {status}\n{self.stderr()}")

    def stderr(self) -> str:
        return (self.tmp / "dreamd.stderr").read_text()[-3000:]

    def close(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.notify.close()
        self.log.close()


@pytest.fixture
def daemons(tmp_path):
    made = []

    def make(**kwargs):
        made.append(Daemon(tmp_path, **kwargs))
        return made[-1]

    yield make
    for daemon in made:
        daemon.close()


def drop(state: Path, name: str, lines: int) -> None:
    """The safe way to add a log: write under inbox/tmp, rename into inbox/new."""
    tmp = state / "inbox" / "tmp" / name
    tmp.write_text("".join(json.dumps({"role": "user", "content": f"m{i}"}) + "\n" for i in range(lines)))
    tmp.rename(state / "inbox" / "new" / name)


def test_lifecycle_under_a_fake_systemd(daemons):
    d = daemons().start()
    ready = d.wait_for("READY=1")
    assert any(line.startswith("STATUS=") for line in ready.split("\n"))
    d.wait_for("WATCHDOG=1", timeout=5)
    status = d.status()
    assert (status["source"], status["daemon"], status["phase"], status["paused"]) == ("daemon", "running", "idle", False)
    assert status["pid"] == d.proc.pid and "dream-cycle" in status["next_runs"]

    drop(d.state, "chat.jsonl", lines=3)  # noticed by the inbox watch, not the 60 s rescan
    status = d.until(lambda s: (s.get("last_ingest") or {}).get("files") == 1)
    assert status["inbox"]["new"] == 0 and status["new_messages_since_cycle"] == 3

    assert json.loads(d.ctl("pause", "--reason", "test", "--json").stdout)["paused"] is True
    assert d.status()["paused"] is True and d.status()["phase"] == "paused"
    refused = d.ctl("dream", "--now", check=False)
    assert refused.returncode == 1 and "paused" in refused.stderr
    d.ctl("resume")
    assert json.loads(d.ctl("dream", "--now", "--json").stdout)["started"] is True
    status = d.until(lambda s: s["last_cycle"] is not None)
    assert status["last_cycle"]["status"] == "ok" and status["last_cycle"]["result"]["outcome"] == "promoted"
    assert status["last_gate_decision"]["decision"] == "promote" and status["new_messages_since_cycle"] == 0
    assert (d.state / "fake-cycles.log").read_text().count("done") == 1

    second = subprocess.run([str(BIN / "dreamd")], env=d.env, cwd=d.tmp, capture_output=True, timeout=30)
    assert second.returncode == 3 and b"already running" in second.stderr

    d.config.write_text(d.config.read_text().replace("dream_interval_minutes = 60", "dream_interval_minutes = 600"))
    d.proc.send_signal(signal.SIGHUP)
    d.wait_for("RELOADING=1", timeout=5)
    d.wait_for("READY=1", timeout=5)
    logs = json.loads(d.ctl("logs", "-n", "200", "--json").stdout)["lines"]
    assert any(e.get("event") == "config reloaded" and "dream-cycle" in e.get("jobs_changed", []) for e in logs)

    d.proc.send_signal(signal.SIGTERM)
    d.wait_for("STOPPING=1", timeout=5)
    assert d.proc.wait(timeout=20) == 0
    assert not (d.state / "ctl.sock").exists()
    status = d.status()  # answered from the state dir now
    assert (status["daemon"], status["source"]) == ("stopped", "state dir")
    assert status["last_cycle"]["status"] == "ok"


def test_sigterm_abandons_a_long_cycle_within_the_stop_timeout(daemons):
    d = daemons(cycle_seconds=120, stop_timeout=2).start()
    d.wait_for("READY=1")
    d.ctl("dream", "--now")
    status = d.until(lambda s: s["phase"] == "dreaming" and s["child_pid"])
    child = status["child_pid"]
    d.until(lambda s: (d.state / "fake-cycles.log").exists())
    started = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    d.wait_for("STOPPING=1", timeout=5)
    assert d.proc.wait(timeout=30) == 0
    assert time.monotonic() - started < 2 + 5 + 5  # stop timeout + SIGTERM grace + slack
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]
    assert "done" not in (d.state / "fake-cycles.log").read_text()
    saved = json.loads((d.state / "service.json").read_text())
    assert saved["phase"] == "stopped" and saved["last_cycle"]["status"] == "abandoned"


def test_sigkill_then_restart_recovers(daemons):
    d = daemons(cycle_seconds=120).start()
    d.wait_for("READY=1")
    d.ctl("pause")
    d.ctl("resume")
    d.ctl("dream", "--now")
    child = d.until(lambda s: s["child_pid"])["child_pid"]
    d.ctl("pause", "--reason", "survives a crash")
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(timeout=10)
    deadline = time.monotonic() + 10  # the child dies with its parent (PR_SET_PDEATHSIG)
    while Path(f"/proc/{child}").exists() and "Z" not in Path(f"/proc/{child}/stat").read_text().split()[2]:
        assert time.monotonic() < deadline, "orphaned child survived the daemon"
        time.sleep(0.1)
    assert (d.state / "ctl.sock").exists()  # stale: the file is there, nobody listens
    assert d.status()["daemon"] == "stopped"

    d.start()  # same state dir: the lock is free, the socket is replaced
    d.wait_for("READY=1")
    status = d.status()
    assert status["source"] == "daemon" and status["pid"] == d.proc.pid
    assert status["paused"] is True and status["pause_reason"] == "survives a crash"
    d.ctl("resume")
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(timeout=20) == 0
