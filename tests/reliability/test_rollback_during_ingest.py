"""A rollback while a large ingest runs: both succeed. The ingest holds the database's write lock
once per file, the rollback's history row needs it too: busy_timeout makes each wait its turn."""

from __future__ import annotations

import threading

from dreamd.daemon.gate.history import roll_back
from dreamd.trainers.checkpoints.pointers import read_pointer, set_pointer
from tests.memory_graph.test_ingest import conversation_jsonl
from tests.reliability.test_disk_full import note_checkpoint
from tests.reliability.test_inbox_hostile import names, put

FILES = 300


def test_rollbacks_while_a_large_ingest_runs(layout, make_ingester):
    first, second = note_checkpoint(layout), note_checkpoint(layout)
    set_pointer(layout, "current", second)
    set_pointer(layout, "last_good", first)
    for i in range(FILES):
        put(layout, f"chat-{i:04d}.jsonl", conversation_jsonl(f"backlog{i}", 2).encode())
    ingester = make_ingester(batch_messages=2)  # a transaction per file, a write lock taken 300 times
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(report=ingester.drain()))
    worker.start()
    moves = []
    while worker.is_alive() and len(moves) < 20:
        target = first if read_pointer(layout, "current") == second else second
        moved = roll_back(layout, target, "test")
        assert moved["changed"] and read_pointer(layout, "current") == target
        moves.append(moved["recorded"])
    worker.join(timeout=120)
    assert not worker.is_alive()
    assert len(moves) >= 3, "the ingest ended before the rollbacks could overlap it"
    assert all(recorded == 1 for recorded in moves)  # every history row written, none lost to a lock
    assert result["report"].ingested == FILES and len(names(layout, "done")) == FILES
    assert ingester.db.execute("SELECT count(*) FROM pointer_moves").fetchone()[0] == len(moves)
