"""The real `dreamd` with its real stages, end to end, under a fake systemd.

A subprocess `dreamd` on a temporary state dir, a datagram socket as $NOTIFY_SOCKET (READY=1 and
WATCHDOG=1 must arrive), the bundled sample logs dropped with `dreamctl ingest`, `dreamctl dream
--now`, a whole cycle (dreams, signal agent, training round, quality gate, promotion or
rejection), `dreamctl status --json`, `dreamctl rollback` through the daemon, and SIGTERM. Then the
same cycle interrupted by SIGKILL at seeded random moments, restarting each time: nothing may be
lost, doubled or left half-written.

The tiny model (tests/helpers/tiny.py, saved as a model directory) keeps these quick; one variant runs the
real default model. The embedder is the real default in both; the settings are small ones
(tests/helpers/daemon_harness.py `real_stages_config`).
"""

import json
import random
import sqlite3
import time

import pytest

from dreamd.daemon.cli.demo import sample_files
from dreamd.daemon.service.state_dir import StateLayout
from dreamd.trainers.checkpoints.pointers import BASE, read_pointer, verify_loadable
from tests.helpers.anchors import share_anchors
from tests.helpers.daemon_harness import Daemon, drop, real_stages_config, save_tiny_model

SAMPLE_MESSAGES, SAMPLE_MEMORIES = 43, 20  # the six bundled logs (tests/integration/test_default_model.py)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture
def daemon(tmp_path):
    made = []

    def make(model_dir, dreams: int) -> Daemon:
        made.append(Daemon(tmp_path, config=real_stages_config(model_dir, dreams), stages=None))
        return made[-1]

    yield make
    for d in made:
        d.close()


def ingest_samples(d: Daemon, messages: int = SAMPLE_MESSAGES) -> dict:
    dropped = d.ctl_json("ingest", *map(str, sample_files()))["dropped"]
    assert len(dropped) == 6 and all("/inbox/new/" in path for path in dropped)
    return d.until(lambda s: s["inbox"]["new"] == s["inbox"]["processing"] == 0
                   and s["graph"]["messages"] == messages, timeout=120, every=0.5)


def one_cycle(d: Daemon, timeout: float) -> tuple[dict, float]:
    """`dreamctl dream --now`, then wait for the cycle's end; returns the status and its seconds."""
    before = (d.status().get("last_cycle") or {}).get("started")
    started = time.monotonic()
    assert d.ctl_json("dream", "--now")["started"] is True
    status = d.until(lambda s: s["last_cycle"] and s["last_cycle"]["started"] != before
                     and s["phase"] != "dreaming", timeout=timeout, every=0.5)
    return status, time.monotonic() - started


def pointer(status_value):
    return status_value or BASE  # status shows no pointer file as None


def assert_recovered(layout: StateLayout) -> None:
    """Both pointers name base or a complete checkpoint that verifies; the database is intact."""
    for name in ("current", "last_good"):
        target = read_pointer(layout, name)
        if target != BASE:
            verify_loadable(layout, target)
    with sqlite3.connect(layout.database) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


def check_full_cycle(d: Daemon, dreams: int, cycle_timeout: float) -> None:
    """READY and WATCHDOG, the samples through the inbox, a cycle to a gate decision, status,
    rollback through the daemon, SIGTERM."""
    d.start()
    ready = d.wait_for("READY=1", timeout=60)
    assert any(line.startswith("STATUS=") for line in ready.split("\n"))
    d.wait_for("WATCHDOG=1", timeout=5)
    status = ingest_samples(d)
    assert status["graph"]["nodes"] == SAMPLE_MEMORIES and status["inbox"]["quarantine"] == 0
    assert (d.state / "inbox" / "done").is_dir() and len(list((d.state / "inbox" / "done").iterdir())) == 6

    status, _seconds = one_cycle(d, cycle_timeout)
    assert (status["source"], status["daemon"], status["phase"]) == ("daemon", "running", "idle")
    assert status["last_cycle"]["status"] == "ok", status["last_cycle"]
    decision = status["last_gate_decision"]
    assert decision, status["last_cycle"]  # the cycle reached the gate
    candidate = decision["checkpoint"]
    assert decision["decision"] in ("promoted", "rejected") and decision["purpose"] == "candidate"
    assert status["last_cycle"]["result"]["outcome"] == decision["decision"]
    assert status["training_rounds"] == 1
    assert status["dreams"]["generated"] == dreams and status["dreams"]["accepted"] >= 1
    layout = StateLayout(d.state)
    assert verify_loadable(layout, candidate).id == candidate
    assert not list(layout.checkpoints.glob("*.tmp"))
    promoted = decision["decision"] == "promoted"
    expected = candidate if promoted else BASE
    assert (pointer(status["current"]), pointer(status["last_good"])) == (expected, expected)
    if promoted:
        assert status["current_evaluation"]["decision"] == "promoted"

    # Rollback goes through the daemon: to the base, to a checkpoint by id, back to last_good.
    away = BASE if promoted else candidate
    moved = d.ctl_json("rollback", *(["--to-base"] if promoted else [candidate]))
    assert (moved["via"], moved["current"], moved["previous"], moved["changed"]) == ("daemon", away, expected, True)
    assert moved["recorded"] == 1 and moved["jobs_stopped"] == {}  # the move is in the pointer history
    status = d.status()
    assert (pointer(status["current"]), pointer(status["last_good"])) == (away, expected)
    back = d.ctl_json("rollback")
    assert (back["via"], back["current"], back["changed"]) == ("daemon", expected, True)
    assert d.ctl_json("rollback")["changed"] is False  # idempotent
    assert pointer(d.status()["current"]) == expected
    logs = d.ctl_json("logs", "-n", "400")["lines"]
    assert sum(e.get("event") == "rollback" for e in logs) == 3

    assert d.stop() == 0
    assert not (d.state / "ctl.sock").exists()
    assert_recovered(layout)
    status = d.status()  # from the state dir now
    assert (status["daemon"], status["source"], status["last_cycle"]["status"]) == ("stopped", "state dir", "ok")


def test_a_real_cycle_under_a_fake_systemd_on_the_tiny_model(daemon, tiny_model_dir):
    check_full_cycle(daemon(tiny_model_dir, dreams=4), dreams=4, cycle_timeout=180)


# About 5 minutes on 2 cores: run with `-m slow`. The default run has the tiny model's cycle here
# and the default model's cycle in a real daemon in the demo test (tests/integration/test_default_model.py).
@pytest.mark.real_model
@pytest.mark.slow
def test_a_real_cycle_under_a_fake_systemd_on_the_default_model(daemon, default_model_dir, default_anchor_cache):
    d = daemon(default_model_dir, dreams=2)
    share_anchors(default_anchor_cache, d.state)
    check_full_cycle(d, dreams=2, cycle_timeout=600)


# --- SIGKILL at random moments ------------------------------------------------------------------

KILLS = 4
EXTRA_MESSAGES, EXTRA_MEMORIES = 8, 4  # per extra log: two conversations of two exchanges


def extra_log(round_: int) -> str:
    """A log with new content each round (OpenAI chat JSONL, a conversation per line)."""
    lines = []
    for conversation in range(2):
        messages = []
        for turn in range(2):
            tag = f"round {round_}, conversation {conversation}, turn {turn}"
            messages += [{"role": "user", "content": f"In {tag}: which shelf holds the blue folder?"},
                         {"role": "assistant", "content": f"For {tag}, the blue folder is on shelf {turn + 3}."}]
        lines.append(json.dumps({"messages": messages}))
    return "\n".join(lines) + "\n"


def inbox_names(state) -> dict[str, set[str]]:
    return {folder: {p.name for p in (state / "inbox" / folder).iterdir() if not p.name.endswith(".error.json")}
            for folder in ("new", "processing", "done", "quarantine")}


def last_event(d: Daemon) -> str:
    """What the daemon or its child logged last before the kill (shown when the test fails)."""
    for line in reversed(d.stderr().splitlines()):
        try:
            return json.loads(line)["event"][:80]
        except (ValueError, KeyError, TypeError):
            continue
    return "?"


def database_counts(layout: StateLayout) -> tuple[int, int]:
    with sqlite3.connect(layout.database) as db:
        return (db.execute("SELECT count(*) FROM messages").fetchone()[0],
                db.execute("SELECT count(*) FROM memory_nodes").fetchone()[0])


def test_sigkill_at_random_moments_then_restart_loses_nothing(daemon, tiny_model_dir):
    d = daemon(tiny_model_dir, dreams=4).start()
    layout = StateLayout(d.state)
    d.wait_for("READY=1", timeout=60)
    ingest_samples(d)
    _status, cycle_seconds = one_cycle(d, timeout=180)  # how long a whole cycle takes here
    dropped = {f.name for f in sample_files()}

    rng = random.Random(20240607)
    seen_tmp = []
    for kill in range(KILLS):
        # Spread the kills over the cycle: one random moment in each quarter of its duration.
        delay = cycle_seconds * (kill + rng.random()) / KILLS
        name = f"extra-{kill}.jsonl"
        drop(d.state, name, extra_log(kill))  # ingested while the cycle runs, or after the restart
        dropped.add(name)
        d.ctl("dream", "--now")
        time.sleep(delay)
        d.kill()
        print(f"kill {kill} after {delay:.1f} s of a {cycle_seconds:.1f} s cycle; last logged: {last_event(d)}")

        # Down: what the crash left must already be consistent.
        assert_recovered(layout)
        names = inbox_names(d.state)
        assert not names["quarantine"]
        assert names["new"] | names["processing"] | names["done"] == dropped  # none lost
        seen_tmp += [p.name for p in layout.checkpoints.glob("*.tmp")]

        d.start()  # the lock is free again; leftovers in processing/ are ingested before READY
        d.wait_for("READY=1", timeout=90)
        status = d.until(lambda s: s["inbox"]["new"] == s["inbox"]["processing"] == 0, timeout=60)
        assert (status["source"], status["pid"]) == ("daemon", d.proc.pid)
        extra = len(dropped) - 6
        assert database_counts(layout) == (SAMPLE_MESSAGES + extra * EXTRA_MESSAGES,
                                           SAMPLE_MEMORIES + extra * EXTRA_MEMORIES)  # nothing doubled
        assert inbox_names(d.state)["done"] == dropped

    status, _seconds = one_cycle(d, timeout=180)
    assert status["last_cycle"]["status"] == "ok", status["last_cycle"]
    assert status["last_gate_decision"]["decision"] in ("promoted", "rejected")
    assert not list(layout.checkpoints.glob("*.tmp")), seen_tmp  # cleaned by the cycle's load
    assert d.stop() == 0
    assert_recovered(layout)
    with sqlite3.connect(layout.database) as db:
        gated = db.execute("SELECT count(*) FROM evaluations WHERE purpose = 'candidate'").fetchone()[0]
    assert gated >= 2  # the first cycle's and the last one's, at least
