"""Power loss after an acknowledged ingest: a child process ingests with the database's real
settings and is SIGKILLed right after it acknowledges a file; every acknowledged file is in the
database after reopening.

A SIGKILL keeps what the kernel already holds, which a power cut does not; so the test also
asserts the settings that make the kernel's copy reach the disk before the acknowledgement:
journal_mode=WAL with synchronous=FULL, under which SQLite fsyncs the WAL at every commit (with
NORMAL, a commit in WAL mode may be lost to a power cut until the next checkpoint, which is why
NORMAL is not enough here: the file leaves processing/ right after its commit). The kill test
then checks the order in the code: nothing is acknowledged before its commit returned.
"""

from __future__ import annotations

import hashlib
import random
import signal
import subprocess
import sys
from pathlib import Path

from dreamd.daemon.service.state_dir import StateLayout
from dreamd.memory_graph.database.store import integrity_ok, open_store
from dreamd.memory_graph.inbox import Inbox
from dreamd.memory_graph.settings import InboxSettings
from tests.memory_graph.test_crash import chat_file

WORKER = Path(__file__).with_name("ack_worker.py")
KILLS = 6


def test_everything_acknowledged_survives_a_kill_right_after(tmp_path):
    rng = random.Random(16)
    layout = StateLayout(tmp_path / "state").ensure()
    inbox = Inbox(layout.inbox, InboxSettings())
    sources = tmp_path / "sources"
    sources.mkdir()
    acked: set[str] = set()
    dropped = 0
    for _kill in range(KILLS):
        for _ in range(4):
            inbox.drop(chat_file(sources, dropped, rng))
            dropped += 1
        worker = subprocess.Popen([sys.executable, str(WORKER), str(layout.root)], stdout=subprocess.PIPE, text=True)
        settings = worker.stdout.readline().split()
        assert settings == ["SETTINGS", "2", "wal"]  # synchronous=FULL (2), WAL
        wanted = rng.randint(1, 3)
        got = 0
        while got < wanted:
            line = worker.stdout.readline()
            assert line.startswith("ACK"), line
            acked.add(line.split()[1])
            got += 1
        worker.send_signal(signal.SIGKILL)  # right after the acknowledgement
        assert worker.wait() == -signal.SIGKILL
        db = open_store(layout.database)
        stored = {row[0] for row in db.execute("SELECT sha256 FROM sources").fetchall()}
        assert acked <= stored, acked - stored
        assert integrity_ok(db)
        db.close()
    assert len(acked) >= KILLS
    finish = subprocess.run([sys.executable, str(WORKER), str(layout.root)], capture_output=True, text=True,
                            timeout=120)
    assert finish.returncode == 0 and "DONE" in finish.stdout, finish.stderr
    db = open_store(layout.database)
    expected = {hashlib.sha256(p.read_bytes()).hexdigest() for p in sources.iterdir()}
    assert {row[0] for row in db.execute("SELECT sha256 FROM sources").fetchall()} == expected
