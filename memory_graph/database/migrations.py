"""The database schema, as an append-only list of numbered migrations.

Every stage that keeps state adds its tables here, at the end, with `@migration` (dreams,
checkpoints and evaluations come after the memory graph). A migration's number is its place in
this list and is recorded with its name in `_migrations`; never edit, reorder or remove one that
has shipped — add a new one that changes what it made. Each runs inside the `BEGIN IMMEDIATE`
transaction `migrate` opens, so two processes starting together cannot both apply it, and a crash
leaves the schema either before or after it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlite_utils import Database

MIGRATIONS: list[Callable[[Database], None]] = []


class SchemaError(RuntimeError):
    """The database was made by other code: a newer dreamd, or a migration list that was edited."""


def migration(function: Callable[[Database], None]) -> Callable[[Database], None]:
    MIGRATIONS.append(function)
    return function


def _run(db: Database, statements: str) -> None:
    # Not executescript: it commits first, and a migration must stay inside migrate's transaction.
    for statement in statements.split(";"):
        if statement.strip():
            db.execute(statement)


@migration
def m001_memory_graph(db: Database) -> None:
    _run(db, """
    CREATE TABLE sources (
        id INTEGER PRIMARY KEY,
        sha256 TEXT NOT NULL UNIQUE,            -- of the file's bytes: a file is ingested once
        name TEXT NOT NULL,                     -- its name in the inbox
        format TEXT NOT NULL,
        bytes INTEGER NOT NULL,
        conversations INTEGER NOT NULL,
        messages INTEGER NOT NULL,              -- new messages stored from it
        duplicate_messages INTEGER NOT NULL,    -- messages already stored from an earlier file
        skipped INTEGER NOT NULL,               -- malformed records left out
        skip_reasons TEXT NOT NULL,             -- JSON list, the first few
        ingested_at REAL NOT NULL
    );
    CREATE TABLE conversations (
        id INTEGER PRIMARY KEY,
        key TEXT NOT NULL UNIQUE,               -- the export's id, or a hash of the whole conversation
        source_id INTEGER NOT NULL REFERENCES sources(id),
        external_id TEXT,
        title TEXT,
        position TEXT NOT NULL
    );
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        sha256 TEXT NOT NULL UNIQUE,            -- of conversation key, place, role and text
        conversation_id INTEGER NOT NULL REFERENCES conversations(id),
        source_id INTEGER NOT NULL REFERENCES sources(id),
        seq INTEGER NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant', 'tool')),
        text TEXT NOT NULL,
        timestamp REAL,
        position TEXT NOT NULL                  -- where in the source file
    );
    CREATE INDEX messages_conversation ON messages(conversation_id, seq);
    CREATE TABLE memory_nodes (
        id INTEGER PRIMARY KEY,
        conversation_id INTEGER NOT NULL REFERENCES conversations(id),
        first_message_id INTEGER NOT NULL UNIQUE REFERENCES messages(id),
        last_message_id INTEGER NOT NULL REFERENCES messages(id),
        text TEXT NOT NULL,
        timestamp REAL
    );
    CREATE INDEX memory_nodes_conversation ON memory_nodes(conversation_id, id);
    CREATE TABLE edges (
        src INTEGER NOT NULL REFERENCES memory_nodes(id),
        dst INTEGER NOT NULL REFERENCES memory_nodes(id),
        kind TEXT NOT NULL CHECK (kind IN ('temporal', 'same_conversation', 'semantic')),
        weight REAL NOT NULL CHECK (weight > 0),
        PRIMARY KEY (src, dst, kind),
        CHECK (src < dst)                       -- undirected: each pair stored once
    ) WITHOUT ROWID;
    CREATE INDEX edges_dst ON edges(dst);
    CREATE TABLE embeddings (
        node_id INTEGER PRIMARY KEY REFERENCES memory_nodes(id),
        model TEXT NOT NULL,
        dimension INTEGER NOT NULL,
        vector BLOB NOT NULL                    -- float32, little-endian, unit length
    )
    """)


# Later stages append their migrations below this line.


@migration
def m002_dreams(db: Database) -> None:
    # Every dream is kept, accepted or not, with what made it and why it was judged so (daemon/dreaming/dreams.py).
    _run(db, """
    CREATE TABLE dreams (
        id INTEGER PRIMARY KEY,
        batch TEXT NOT NULL,                    -- the cycle's batch id
        created_at REAL NOT NULL,
        model TEXT NOT NULL,                    -- the model directory that dreamed
        seed INTEGER NOT NULL,
        node_ids TEXT NOT NULL,                 -- JSON list: the collision's memories, in order
        walk TEXT NOT NULL,                     -- JSON list of paths (node ids) joining them
        fragments TEXT NOT NULL,                -- JSON list: the memories as the model saw them
        temperature REAL NOT NULL,
        scenario TEXT NOT NULL,
        response TEXT NOT NULL,
        generated_tokens INTEGER NOT NULL,
        failure TEXT,                           -- why generation gave no usable dream
        scores TEXT NOT NULL,                   -- JSON {scorer: {value, normalized, passed, reason, detail}}
        total REAL,
        accepted INTEGER NOT NULL CHECK (accepted IN (0, 1)),   -- the signal agent's decision
        reasons TEXT NOT NULL,                  -- JSON list
        status TEXT NOT NULL CHECK (status IN ('rejected', 'accepted', 'pending_review', 'approved',
                                               'review_rejected')),
        vector BLOB,                            -- float32 unit embedding of scenario + response
        trained_in TEXT                         -- the checkpoint whose round used it
    );
    CREATE INDEX dreams_status ON dreams(status, id);
    CREATE TABLE dream_memories (               -- from a memory to the dreams (and examples) it caused
        dream_id INTEGER NOT NULL REFERENCES dreams(id),
        position INTEGER NOT NULL,
        node_id INTEGER NOT NULL REFERENCES memory_nodes(id),
        PRIMARY KEY (dream_id, position)
    );
    CREATE INDEX dream_memories_node ON dream_memories(node_id)
    """)


@migration
def m003_dream_reviews(db: Database) -> None:
    _run(db, """
    CREATE TABLE dream_reviews (
        id INTEGER PRIMARY KEY,
        dream_id INTEGER NOT NULL REFERENCES dreams(id),
        decision TEXT NOT NULL CHECK (decision IN ('approved', 'rejected')),
        reviewer TEXT NOT NULL,
        note TEXT NOT NULL,
        at REAL NOT NULL
    )
    """)


@migration
def m004_evaluations(db: Database) -> None:
    # Every evaluation the quality gate made, with its decision (daemon/gate/).
    _run(db, """
    CREATE TABLE evaluations (
        id INTEGER PRIMARY KEY,
        checkpoint TEXT NOT NULL,               -- a checkpoint id, or 'base'
        purpose TEXT NOT NULL CHECK (purpose IN ('base', 'reference', 'candidate', 'recheck')),
        suite_key TEXT NOT NULL,                -- hash of what the suite held: same key, same numbers
        evaluated_at REAL NOT NULL,
        seconds REAL NOT NULL,
        metrics TEXT NOT NULL,                  -- JSON, see trainers/gate/metrics.py
        fingerprint BLOB NOT NULL,              -- float32 embeddings of the fingerprint answers
        decision TEXT NOT NULL CHECK (decision IN ('baseline', 'reference', 'promoted', 'rejected', 'kept',
                                                   'rolled_back')),
        reasons TEXT NOT NULL,                  -- JSON list: why it was rejected or rolled back
        compared_to TEXT                        -- the checkpoint it was judged against
    );
    CREATE INDEX evaluations_checkpoint ON evaluations(checkpoint, suite_key, id)
    """)


@migration
def m005_history(db: Database) -> None:
    # What `dreamctl report` draws that no other table keeps: every training round with its
    # per-step losses, and every move of a pointer with why and by whom (daemon/gate/history.py).
    _run(db, """
    CREATE TABLE training_rounds (
        id INTEGER PRIMARY KEY,
        checkpoint TEXT NOT NULL UNIQUE,        -- the candidate the round wrote
        parent TEXT NOT NULL,                   -- the checkpoint it trained from, or 'base'
        mode TEXT NOT NULL,                     -- lora or full
        started_at REAL NOT NULL,
        finished_at REAL NOT NULL,
        examples INTEGER NOT NULL,
        dream_examples INTEGER NOT NULL,        -- of the examples, how many were dreams (the rest replay)
        steps INTEGER NOT NULL,
        losses TEXT NOT NULL                    -- JSON list, one per step in order (null: not finite)
    );
    CREATE TABLE pointer_moves (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        pointer TEXT NOT NULL CHECK (pointer IN ('current', 'last_good')),
        from_checkpoint TEXT NOT NULL,          -- a checkpoint id, or 'base'
        to_checkpoint TEXT NOT NULL,
        why TEXT NOT NULL,                      -- promoted, rolled_back (the gate's re-check), manual_rollback, ...
        by TEXT NOT NULL                        -- gate, recheck, or 'dreamctl <user>'
    );
    CREATE INDEX pointer_moves_at ON pointer_moves(at)
    """)


@migration
def m006_dream_kinds(db: Database) -> None:
    # Dreams became rehearsals: which question a dream asks (logged, reworded, about, join), and
    # whose answer it trains on (teacher: the model with its notes; logged: the memory's own, replay).
    # No SQL comments here: SQLite copies an added column's text, comments too, into the table's schema.
    _run(db, """
    ALTER TABLE dreams ADD COLUMN kind TEXT NOT NULL DEFAULT 'join';
    ALTER TABLE dreams ADD COLUMN target TEXT NOT NULL DEFAULT 'teacher'
    """)


@migration
def m007_dream_teacher(db: Database) -> None:
    # The teacher's top-k over a dream's answer (trainers/examples.py SoftTargets.to_bytes), when
    # dreams.teacher_top_k keeps it: the student's soft targets.
    _run(db, "ALTER TABLE dreams ADD COLUMN teacher_top_k BLOB")


def migrate(db: Database) -> list[str]:
    """Apply the migrations this database lacks; return the names applied."""
    from dreamd.memory_graph.database.store import write

    applied_now = []
    with write(db):
        db.execute(
            "CREATE TABLE IF NOT EXISTS _migrations "
            "(number INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
        )
        applied = dict(db.execute("SELECT number, name FROM _migrations").fetchall())
        if applied and max(applied) > len(MIGRATIONS):
            raise SchemaError(f"the database has migration {max(applied)}; this dreamd knows {len(MIGRATIONS)}")
        for number, function in enumerate(MIGRATIONS, start=1):
            if number in applied:
                if applied[number] != function.__name__:
                    raise SchemaError(f"migration {number} is {applied[number]!r} in the database, "
                                      f"{function.__name__!r} here: the list was edited")
                continue
            function(db)
            db.execute("INSERT INTO _migrations VALUES (?, ?, ?)", (number, function.__name__, time.time()))
            applied_now.append(function.__name__)
    return applied_now

