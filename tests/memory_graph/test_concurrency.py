"""Ingest beside other users of the database: a reader holding a transaction is never refused, and
memories another writer commits between our search and our write still become neighbours."""

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dreamd.daemon.service.state_dir import StateLayout
from dreamd.memory_graph.database.store import blob_vector, connect, open_store
from dreamd.memory_graph.inbox import Inbox
from dreamd.memory_graph.memories import knn_pairs, nearest_others
from dreamd.memory_graph.settings import GraphSettings, InboxSettings
from tests.bench.bench_ingest import synthetic_files
from tests.memory_graph.synthetic import WordEmbedder, chat_files, racing_writers

WORKER = Path(__file__).with_name("ingest_worker.py")


def test_a_reader_holding_a_transaction_is_never_refused_during_ingest(tmp_path):
    layout = StateLayout(tmp_path / "state").ensure()
    inbox = Inbox(layout.inbox, InboxSettings())
    (tmp_path / "sources").mkdir()
    for path in synthetic_files(tmp_path / "sources", 2000, per_file=20):  # a commit per file: 100
        inbox.drop(path)
    open_store(layout.database).close()  # the schema, before the reader looks
    reader, other = connect(layout.database), connect(layout.database)
    reader.execute("BEGIN")
    held = reader.execute("SELECT count(*) FROM messages").fetchone()[0]
    worker = subprocess.Popen([sys.executable, str(WORKER), str(layout.root)], stdout=subprocess.DEVNULL)
    slowest, reads, refused, seen = 0.0, 0, [], set()
    while worker.poll() is None:
        started = time.monotonic()
        try:
            # The held snapshot stays put; a fresh read sees the ingest advance. Neither waits.
            assert reader.execute("SELECT count(*) FROM messages").fetchone()[0] == held
            seen.add(other.execute("SELECT count(*) FROM messages").fetchone()[0])
        except sqlite3.OperationalError as exc:  # SQLITE_BUSY reads "database is locked"
            refused.append(str(exc))
        slowest = max(slowest, time.monotonic() - started)
        reads += 1
        time.sleep(0.002)
    reader.execute("COMMIT")
    assert worker.returncode == 0 and refused == []
    assert other.execute("SELECT count(*) FROM messages").fetchone()[0] == 2000
    assert reads > 20 and len(seen) > 3  # the reads really ran while the ingest committed
    # A read waits for no writer (WAL); the bound is loose for a loaded 2-core machine.
    assert slowest < 0.25, f"a read took {slowest:.3f} s"


@pytest.mark.parametrize("exact_below", [20_000, 0], ids=["exact", "index"])
def test_memories_committed_between_search_and_write_become_neighbours(tmp_path, exact_below):
    settings = GraphSettings(min_similarity=0.2, exact_below=exact_below)
    ours, theirs, raced, race = racing_writers(tmp_path, settings, WordEmbedder())
    for path in chat_files(tmp_path / "sources", 0):
        ours.inbox.drop(path)
    ours.drain()
    for path in chat_files(tmp_path / "sources", 2):
        theirs.inbox.drop(path)
    race()  # the other process commits all its files between our search and our write
    for path in chat_files(tmp_path / "sources", 1, files=1):
        ours.inbox.drop(path)
    ours.drain()
    assert raced == [4]

    db = ours.db
    sources = [row[0] for row in db.execute("SELECT id FROM sources ORDER BY id")]
    ours_ids, theirs_ids = (
        np.array([r[0] for r in db.execute(
            "SELECT n.id FROM memory_nodes n JOIN messages m ON m.id = n.first_message_id "
            f"WHERE m.source_id IN ({','.join('?' * len(which))}) ORDER BY n.id", which)], dtype=np.int64)
        for which in (sources[-1:], sources[4:8]))
    assert theirs_ids.max() < ours_ids.min()  # they committed first, ours took the ids after theirs
    # Expected: the exact scan over everything stored when ours committed, as if searched inside it.
    rows = db.execute("SELECT n.id, n.conversation_id, e.vector FROM memory_nodes n JOIN embeddings e "
                      "ON e.node_id = n.id ORDER BY n.id").fetchall()
    ids = np.array([r[0] for r in rows])
    conversations = np.array([r[1] for r in rows])
    vectors = np.stack([blob_vector(r[2]) for r in rows])
    mine = np.searchsorted(ids, ours_ids)
    expected = {(a, b): w for a, b, _, w in knn_pairs(
        ours_ids, [nearest_others(vectors[mine], conversations[mine], ids, vectors, conversations, 8)], 8, 0.2)}
    found = {(a, b): w for a, b, w in db.execute(
        f"SELECT src, dst, weight FROM edges WHERE kind = 'semantic' AND dst IN ({','.join('?' * len(ours_ids))})",
        ours_ids.tolist())}
    assert found.keys() == expected.keys()
    assert all(abs(found[e] - expected[e]) < 1e-5 for e in expected)
    assert any(a in set(theirs_ids.tolist()) for a, _ in expected)  # the race mattered: edges to theirs
    theirs.db.close()
