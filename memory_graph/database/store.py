"""The SQLite file every stage shares: how it is opened and how it is written.

WAL lets `dreamctl status` read while the daemon writes; busy_timeout makes a writer wait for
another instead of failing; `BEGIN IMMEDIATE` takes the write lock at the start of a transaction,
so two writers never both read and then collide on upgrading to write (which SQLite answers with
SQLITE_BUSY at once, busy_timeout or not). synchronous=FULL because a file leaves
`inbox/processing/` right after its commit: the commit must survive a power cut by then.

Two sizes matter once the store holds tens of thousands of memories (measured with
tests/bench/bench_inbox_scale.py, `--knn-k 0`, 20,000 files: 1,064 files/s with SQLite's defaults,
1,106-1,152 with both). The page cache: SQLite's 2 MiB default no longer holds the indexes a
commit walks (the messages' hashes land anywhere in theirs), so each commit reads pages back
through the OS; 64 MiB at most, per connection, taken only as used. The WAL's checkpoint: by
default every 1,000 pages, copying each changed page into the database; the same hot pages (the
tables' right edges, the indexes' inner pages) change in nearly every commit, so checkpointing ten
times less often copies them ten times less. The WAL grows to about 40 MiB between checkpoints;
it is as durable as the database (synchronous=FULL fsyncs it at every commit).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from sqlite_utils import Database

BUSY_TIMEOUT_MS = 10_000
CACHE_KIB = 65_536
CHECKPOINT_PAGES = 10_000


def connect(path: Path | str) -> Database:
    """A connection with the project's pragmas, in autocommit mode: transactions are explicit."""
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode.lower() != "wal":
        raise sqlite3.OperationalError(f"{path}: could not switch to WAL (journal_mode is {mode})")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
    conn.execute(f"PRAGMA wal_autocheckpoint = {CHECKPOINT_PAGES}")
    return Database(conn)


def open_store(path: Path | str) -> Database:
    """Connect and bring the schema up to date."""
    from dreamd.memory_graph.database.migrations import migrate

    db = connect(path)
    migrate(db)
    return db


@contextmanager
def write(db: Database) -> Iterator[Database]:
    """One write transaction: BEGIN IMMEDIATE ... COMMIT, rolled back on any exception.
    sqlite-utils calls made inside nest as savepoints."""
    db.conn.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        if db.conn.in_transaction:
            db.conn.execute("ROLLBACK")
        raise
    db.conn.execute("COMMIT")


def vector_blob(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def blob_vector(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f4")


def integrity_ok(db: Database) -> bool:
    return db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
