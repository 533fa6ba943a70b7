"""The real `dreamd` as a subprocess, with a datagram socket standing in for systemd.

`Daemon` runs dreamd (through production's `DreamdProcess`, as `dreamctl demo` does) on a temporary
state dir with $NOTIFY_SOCKET and $WATCHDOG_USEC set, records every notify datagram, and drives it
with the real `dreamctl`. By default the stages are scripted fakes (tests/helpers/service_fakes.py);
`stages=None` runs the real ones (ingest, dreams, training, gate).
"""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from dreamd.daemon.service.process import DreamdProcess

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
FAKE_STAGES = "tests.helpers.service_fakes:build"
FAKE_CONFIG = """
[daemon]
inbox_poll_seconds = 0.2
stop_timeout_seconds = {stop_timeout}
dream_interval_minutes = 60
"""
# For the real stages: small dreams and evaluation, cycles only on request. The signal agent
# accepts every dream that plays out (only divergence scored, with no floor), so that a cycle always
# reaches the gate: what these tests check is the service, not a random model's dreams.
REAL_CONFIG = """
[model]
path = "{model}"
device = "cpu"
[inbox]
stable_seconds = 0.5
[dreams]
per_cycle = {dreams}
batch_size = {dreams}
fragment_tokens = 128
scenario_tokens = 24
response_tokens = 24
generation_timeout_seconds = 120
[signal]
judge_weight = 0
hygiene_weight = 0
novelty_weight = 0
min_divergence = -100.0
min_total = 0.0
[training]
max_context_tokens = 256
[evaluation]
slice_size = 4
max_slices = 2
acquisition_count = 2
max_new_tokens = 8
[daemon]
inbox_poll_seconds = 0.2
dream_after_new_messages = 0
dream_interval_minutes = 600
reevaluate_hours = 1000
stop_timeout_seconds = 10
"""


def real_stages_config(model_dir: Path, dreams: int) -> str:
    return REAL_CONFIG.format(model=model_dir, dreams=dreams)


def save_tiny_model(folder: Path) -> Path:
    """tests/helpers/tiny.py's model and tokenizer as a model directory `model.path` can name."""
    from tests.helpers.tiny import tiny_llama, tiny_tokenizer

    tiny_llama().save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


class Daemon:
    """The test fixture around production's `DreamdProcess`: a temporary state dir and config, a
    datagram socket standing in for systemd's, and the real `dreamctl` to drive the daemon."""

    def __init__(self, tmp_path: Path, cycle_seconds: float = 0.2, stop_timeout: float = 3.0,
                 config: str | None = None, stages: str | None = FAKE_STAGES):
        self.tmp = tmp_path
        self.state = tmp_path / "state"
        self.config = tmp_path / "dreamd.toml"
        self.config.write_text(config if config is not None else FAKE_CONFIG.format(stop_timeout=stop_timeout))
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(tmp_path / "notify.sock"))
        self.received: queue.Queue[str] = queue.Queue()  # drained at once, as systemd would
        threading.Thread(target=self._listen, daemon=True).start()
        self.messages: list[str] = []
        self.env = {**os.environ, "DREAMD_STATE_DIR": str(self.state), "DREAMD_CONFIG": str(self.config),
                    "NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "1000000",
                    "PYTHONPATH": str(REPO), "DREAMD_FAKE_CYCLE_SECONDS": str(cycle_seconds)}
        self.env.pop("WATCHDOG_PID", None)
        self.process = DreamdProcess(["--stages", stages] if stages else [], tmp_path / "dreamd.stderr",
                                     env=self.env, cwd=tmp_path)

    @property
    def proc(self) -> subprocess.Popen | None:
        """The running (or last) dreamd's Popen, for the tests' signals and exit codes."""
        return self.process.popen

    def start(self) -> Daemon:
        self.process.start()
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
                              capture_output=True, text=True, timeout=60)
        if check:
            assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done

    def ctl_json(self, *args) -> dict:
        return json.loads(self.ctl(*args, "--json").stdout)

    def status(self) -> dict:
        return self.ctl_json("status")

    def until(self, predicate, timeout: float = 15.0, every: float = 0.2) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status()
            if predicate(status):
                return status
            time.sleep(every)
        raise AssertionError(f"condition not met; last status {status}\n{self.stderr()}")

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, as systemd stops it (SIGKILL after `timeout`); returns the exit code, once
        dreamd has said STOPPING=1."""
        code = self.process.stop(timeout=timeout)
        self.wait_for("STOPPING=1", timeout=10)  # sent before it exited: already queued
        return code

    def kill(self) -> None:
        """SIGKILL, then wait until its children are gone too: the cycle's child dies with it
        (PR_SET_PDEATHSIG), multiprocessing's resource tracker when its pipe closes."""
        children = children_of(self.proc.pid)  # before the kill: orphans get another parent
        self.proc.kill()
        self.proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in children):
            assert time.monotonic() < deadline, f"a child outlived the SIGKILLed daemon: {children}"
            time.sleep(0.05)

    def stderr(self) -> str:
        """The end of dreamd's output (stdout and stderr, every start), for failure messages."""
        return self.process.log_path.read_text()[-3000:]

    def close(self) -> None:
        if self.process.running():  # a test that failed half-way: leave no daemon behind
            self.proc.kill()
            self.proc.wait()
        self.notify.close()


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper counts as gone)."""
    try:
        return "Z" not in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def children_of(pid: int) -> set[int]:
    """The pids whose parent is `pid` now."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == str(pid):
            found.add(int(stat.parent.name))
    return found


def drop(state: Path, name: str, text: str) -> None:
    """The safe way to add a log: write under inbox/tmp, rename into inbox/new."""
    tmp = state / "inbox" / "tmp" / name
    tmp.write_text(text)
    tmp.rename(state / "inbox" / "new" / name)


def jsonl_lines(lines: int) -> str:
    return "".join(json.dumps({"role": "user", "content": f"m{i}"}) + "\n" for i in range(lines))
