"""The real `dreamd` under a fake systemd notify socket: a hung stage stops the watchdog pings, a
large first backlog does not hold READY back, and cycles due while one runs become one catch-up."""

from __future__ import annotations

import queue
import time

import pytest

from tests.helpers.daemon_harness import Daemon, drop

CONFIG = """
[daemon]
inbox_poll_seconds = 0.2
stop_timeout_seconds = 3
dream_interval_minutes = 60
stall_seconds = {stall}
dream_after_new_messages = {early}
"""


@pytest.fixture
def daemon(tmp_path):
    made = []

    def make(stall: float = 1800, early: int = 0, cycle_seconds: float = 2.0, **env) -> Daemon:
        d = Daemon(tmp_path, config=CONFIG.format(stall=stall, early=early), cycle_seconds=cycle_seconds)
        d.env.update(env)
        made.append(d)
        return d

    yield make
    for d in made:
        d.close()


def pings_within(d: Daemon, seconds: float) -> int:
    """WATCHDOG=1 datagrams received in the next `seconds` (those queued before are dropped)."""
    while not d.received.empty():
        d.received.get_nowait()
    count, deadline = 0, time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            count += "WATCHDOG=1" in d.received.get(timeout=left).split("\n")
        except queue.Empty:
            break
    return count


def test_a_hung_ingest_stops_the_watchdog_pings_and_shows_in_status(daemon):
    d = daemon(stall=2).start()
    d.wait_for("READY=1")
    d.wait_for("WATCHDOG=1", timeout=5)
    drop(d.state, "hang.jsonl", "{}\n")  # the fake ingest sleeps on it, reporting no progress
    status = d.until(lambda s: (s.get("stages") or {}).get("ingest", {}).get("stalled") and s["last_error"],
                     timeout=15)
    stage = status["stages"]["ingest"]
    assert "hang.jsonl" in stage["detail"] and stage["idle_s"] > 2
    assert "no progress" in status["last_error"]["error"]
    shown = d.ctl("status").stdout  # and in dreamctl status's own words
    assert "stage ingest" in shown and "STALLED" in shown and "hang.jsonl" in shown
    # While it is stalled (the pings were every 0.5 s), none come: systemd's watchdog would fire.
    assert pings_within(d, 2.0) == 0
    d.kill()


def test_ready_comes_before_a_long_first_backlog_is_done(daemon):
    d = daemon(DREAMD_FAKE_HANG_SECONDS="20")
    for folder in ("tmp", "new"):
        (d.state / "inbox" / folder).mkdir(parents=True, exist_ok=True)
    drop(d.state, "hang-backlog.jsonl", "{}\n")
    started = time.monotonic()
    d.start()
    d.wait_for("READY=1", timeout=18)
    assert time.monotonic() - started < 18  # the backlog's file alone holds the ingest for 20 s
    status = d.status()  # the backlog goes on after READY, and shows
    assert status["phase"] == "ingesting" and "ingest" in status["stages"]
    assert status["inbox"]["processing"] + status["inbox"]["new"] == 1
    d.kill()


def test_cycles_due_while_one_runs_become_one_catch_up(daemon):
    d = daemon(early=1, cycle_seconds=6.0).start()  # every ingested message makes a cycle due at once
    d.wait_for("READY=1")
    log, new = d.state / "fake-cycles.log", d.state / "inbox" / "new"
    drop(d.state, "a.jsonl", "{}\n")
    deadline = time.monotonic() + 20
    while not (log.exists() and "start" in log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)  # the first cycle's child has started
    for name in ("b.jsonl", "c.jsonl"):  # due twice more while the first runs (6 s)
        drop(d.state, name, "{}\n")
        deadline = time.monotonic() + 5
        while (new / name).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    time.sleep(0.5)  # the scan that took it has asked for the cycle by now
    assert "done" not in log.read_text() and log.read_text().count("start") == 1
    deadline = time.monotonic() + 40
    while log.read_text().count("done") < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(4)  # time enough for a third one to start, if it wrongly did
    assert log.read_text().count("start") == 2 and log.read_text().count("done") == 2
    assert d.stop() == 0
