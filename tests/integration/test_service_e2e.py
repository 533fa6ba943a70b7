"""The real `dreamd` as a subprocess, with a datagram socket standing in for systemd.

The stages are scripted fakes (tests/helpers/service_fakes.py): the cycle still runs in dreamd's child
process, so stopping and killing in the middle of one is the real thing.
"""

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers.daemon_harness import BIN, Daemon, jsonl_lines
from tests.helpers.daemon_harness import drop as drop_text


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
    drop_text(state, name, jsonl_lines(lines))


def test_lifecycle_under_a_fake_systemd(daemons):
    d = daemons().start()
    ready = d.wait_for("READY=1")
    assert any(line.startswith("STATUS=") for line in ready.split("\n"))
    d.wait_for("WATCHDOG=1", timeout=5)
    status = d.status()
    assert (status["source"], status["daemon"], status["phase"], status["paused"]) == \
        ("daemon", "running", "idle", False)
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
