"""SIGKILL a real ingesting process at random moments, again and again; then everything is in the
database exactly once, nothing is left behind, and SQLite's integrity check passes."""

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dreamd.daemon.service.state_dir import StateLayout
from dreamd.memory_graph.database.store import integrity_ok, open_store
from dreamd.memory_graph.formats.parse import parse_bytes
from dreamd.memory_graph.graph import MemoryGraph
from dreamd.memory_graph.inbox import Inbox
from dreamd.memory_graph.memories import plan_conversations
from dreamd.memory_graph.settings import InboxSettings

WORKER = Path(__file__).with_name("ingest_worker.py")
KILLS = 22


def chat_file(folder: Path, index: int, rng: random.Random) -> Path:
    lines = []
    for c in range(rng.randint(3, 8)):
        messages = []
        for turn in range(rng.randint(1, 3)):
            messages += [{"role": "user", "content": f"file {index} chat {c} turn {turn}: {rng.random():.6f}"},
                         {"role": "assistant",
                          "content": f"reply {turn} about {rng.choice(['deploys', 'queues', 'tomatoes'])}"}]
        lines.append(json.dumps({"messages": messages}))
    path = folder / f"log-{index:03d}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_sigkill_at_random_moments_loses_and_doubles_nothing(tmp_path):
    kill_and_check(tmp_path, KILLS, seed=20240601)


@pytest.mark.slow
def test_two_hundred_sigkills_lose_and_double_nothing(tmp_path):
    kill_and_check(tmp_path, 200, seed=16)


def kill_and_check(tmp_path: Path, kills_wanted: int, seed: int) -> None:
    rng = random.Random(seed)
    layout = StateLayout(tmp_path / "state").ensure()
    inbox = Inbox(layout.inbox, InboxSettings())
    sources = tmp_path / "sources"
    sources.mkdir()
    dropped: list[Path] = []
    kills = runs = caught_mid_file = 0
    while kills < kills_wanted and runs < 3 * kills_wanted:
        for _ in range(5):
            path = chat_file(sources, len(dropped), rng)
            dropped.append(path)
            inbox.drop(path)
        if rng.random() < 0.3:  # the same content again under another name
            twin = sources / f"twin-of-{dropped[-1].name}"
            twin.write_bytes(dropped[-1].read_bytes())
            dropped.append(twin)
            inbox.drop(twin)
        runs += 1
        worker = subprocess.Popen([sys.executable, str(WORKER), str(layout.root)], stdout=subprocess.PIPE, text=True)
        assert worker.stdout.readline().strip() == "ready"
        if rng.random() < 0.5:
            # Half the kills wait until a file is claimed, then strike a random moment later:
            # inside parsing, the transaction, or between the commit and the move to done/.
            deadline = time.monotonic() + 2
            while not any(layout.inbox_folder("processing").iterdir()) and time.monotonic() < deadline:
                time.sleep(0.0005)
            time.sleep(rng.uniform(0.0, 0.01))
        else:
            time.sleep(rng.uniform(0.0, 0.08))
        worker.send_signal(signal.SIGKILL)
        kills += worker.wait() == -signal.SIGKILL and 1 or 0
        caught_mid_file += bool(list(layout.inbox_folder("processing").iterdir()))
    print(f"{kills} kills in {runs} runs, {caught_mid_file} with a file in processing/")
    assert kills >= kills_wanted - 2, f"only {kills} of {runs} runs were still working when killed"
    # The kills must hit the work, not only the start-up: some left a claimed file behind.
    assert caught_mid_file >= kills_wanted // 5, caught_mid_file

    finish = subprocess.run([sys.executable, str(WORKER), str(layout.root)],
                            capture_output=True, text=True, timeout=120)
    assert finish.returncode == 0, finish.stderr

    expected = set()
    for path in dropped:
        for conversation in plan_conversations(parse_bytes(path.read_bytes())):
            expected.update(m.sha256 for m in conversation.messages)
    db = open_store(layout.database)
    stored = [row[0] for row in db.execute("SELECT sha256 FROM messages").fetchall()]
    assert len(stored) == len(set(stored)) == len(expected) and set(stored) == expected
    distinct_files = {p.read_bytes() for p in dropped}
    assert db.execute("SELECT count(*) FROM sources").fetchone()[0] == len(distinct_files)
    assert integrity_ok(db)
    assert db.execute("PRAGMA foreign_key_check").fetchall() == []
    nodes, embeddings = (db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("memory_nodes", "embeddings"))
    assert nodes == embeddings > 0
    assert len(MemoryGraph.load(db).ids) == nodes
    assert len(list(layout.inbox_folder("done").iterdir())) == len(dropped)
    assert not list(layout.inbox_folder("processing").iterdir()) and not list(layout.inbox_folder("new").iterdir())
