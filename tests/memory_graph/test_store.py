"""The SQLite store: pragmas, explicit write transactions, append-only numbered migrations."""

import sqlite3

import pytest

from dreamd.memory_graph.database import migrations
from dreamd.memory_graph.database.migrations import MIGRATIONS, SchemaError, migrate
from dreamd.memory_graph.database.store import connect, integrity_ok, open_store, write


def test_pragmas_and_schema(tmp_path):
    db = open_store(tmp_path / "d.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA busy_timeout").fetchone()[0] >= 5000
    assert {"sources", "conversations", "messages", "memory_nodes", "edges", "embeddings", "_migrations"} <= set(
        db.table_names())
    rows = db.execute("SELECT number, name FROM _migrations").fetchall()
    assert rows == [(i, f.__name__) for i, f in enumerate(MIGRATIONS, start=1)]
    assert migrate(db) == []  # a second run applies nothing
    assert integrity_ok(db)


def test_a_later_stage_appends_a_migration(tmp_path, monkeypatch):
    db = open_store(tmp_path / "d.db")
    added = []

    def m999_later_stage(db):
        db.execute("CREATE TABLE later_stage (id INTEGER PRIMARY KEY, text TEXT)")

    monkeypatch.setattr(migrations, "MIGRATIONS", [*MIGRATIONS, m999_later_stage])
    added = migrate(db)
    assert added == ["m999_later_stage"] and "later_stage" in db.table_names()
    assert db.execute("SELECT max(number) FROM _migrations").fetchone()[0] == len(MIGRATIONS) + 1


def test_an_edited_or_newer_schema_is_refused(tmp_path, monkeypatch):
    db = open_store(tmp_path / "d.db")
    db.execute("UPDATE _migrations SET name = 'something_else' WHERE number = 1")
    with pytest.raises(SchemaError, match="edited"):
        migrate(db)
    db.execute("UPDATE _migrations SET name = ? WHERE number = 1", (MIGRATIONS[0].__name__,))
    db.execute("INSERT INTO _migrations VALUES (99, 'from_the_future', 0)")
    with pytest.raises(SchemaError, match="99"):
        migrate(db)


def test_write_rolls_back_everything_on_error(tmp_path):
    db = open_store(tmp_path / "d.db")
    with pytest.raises(RuntimeError):
        with write(db):
            db.execute("INSERT INTO sources (sha256, name, format, bytes, conversations, messages, "
                       "duplicate_messages, skipped, skip_reasons, ingested_at) VALUES ('x','n','f',1,0,0,0,0,'[]',0)")
            raise RuntimeError("boom")
    assert db.execute("SELECT count(*) FROM sources").fetchone()[0] == 0


def test_write_takes_the_lock_at_begin(tmp_path):
    """BEGIN IMMEDIATE: a second writer waits (busy_timeout), it does not fail on lock upgrade."""
    path = tmp_path / "d.db"
    first, second = open_store(path), connect(path)
    second.conn.execute("PRAGMA busy_timeout = 100")
    with write(first):
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            second.conn.execute("BEGIN IMMEDIATE")
    with write(second):  # free again
        pass
