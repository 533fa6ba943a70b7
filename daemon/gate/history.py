"""What happened to the model over time, and the one way `current` moves outside the gate.

The database keeps, for `dreamctl report`, every training round (with its per-step losses) and
every move of the `current` / `last_good` pointers (with why and by whom); tables from migration
m005_history. The pointer files stay the truth about which checkpoint is in force; these rows are
the history beside them. A pointer moves first and its row is written after, so a crash in between
loses a row, never a move.

Rollback has two callers and one code path (`roll_back`): the running daemon, for `dreamctl
rollback` over the control socket, after abandoning any child that could move a pointer meanwhile;
and dreamctl itself when the daemon is down (`roll_back_offline`), holding the daemon's instance
lock so that a dreamd starting meanwhile refuses to start rather than race it (the rollback takes
milliseconds). The gate's re-check rolls back through `rollback_and_record` too.

No torch here: moving pointers only reads manifests, hashes files and replaces pointer files.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections.abc import Sequence

import structlog
from sqlite_utils import Database

from dreamd.daemon.service.instance_lock import InstanceLock
from dreamd.daemon.service.state_dir import StateLayout
from dreamd.memory_graph.database.migrations import SchemaError
from dreamd.memory_graph.database.store import open_store, write
from dreamd.trainers.checkpoints.pointers import POINTERS, read_pointer, rollback

log = structlog.get_logger(__name__)

# The `why` of a pointer move, as the report groups them (other values are allowed and shown as-is).
PROMOTED = "promoted"            # the gate passed a candidate
ROLLED_BACK = "rolled_back"      # the gate's re-check failed `current` (or it no longer verifies)
MANUAL_ROLLBACK = "manual_rollback"  # `dreamctl rollback`


def record_training_round(db: Database, *, checkpoint: str, parent: str, mode: str, started_at: float,
                          finished_at: float, examples: int, dream_examples: int,
                          losses: Sequence[float]) -> None:
    """Store one round: the candidate it wrote, where it started, its examples and its loss per
    step (a loss that is not finite is stored as null: JSON has no NaN)."""
    clean = [float(x) if x is not None and math.isfinite(x) else None for x in losses]
    with write(db):
        db.execute(
            "INSERT INTO training_rounds (checkpoint, parent, mode, started_at, finished_at, examples, "
            "dream_examples, steps, losses) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (checkpoint, parent, mode, started_at, finished_at, examples, dream_examples, len(clean),
             json.dumps(clean)))


def read_pointers(layout: StateLayout) -> dict[str, str]:
    """{'current': id, 'last_good': id} as the pointer files say now (`base` when unset)."""
    return {name: read_pointer(layout, name) for name in POINTERS}


def record_pointer_moves(db: Database, before: dict[str, str], after: dict[str, str], why: str, by: str,
                         at: float | None = None) -> list[dict]:
    """Store a row for each pointer whose value differs between `before` and `after` (both as
    `read_pointers` gives them); returns the moves stored. Nothing moved, nothing stored."""
    at = time.time() if at is None else at
    moves = [{"at": at, "pointer": name, "from_checkpoint": before.get(name, "base"),
              "to_checkpoint": after[name], "why": why, "by": by}
             for name in POINTERS if name in after and before.get(name, "base") != after[name]]
    if moves:
        with write(db):
            for move in moves:
                db.execute("INSERT INTO pointer_moves (at, pointer, from_checkpoint, to_checkpoint, why, by) "
                           "VALUES (:at, :pointer, :from_checkpoint, :to_checkpoint, :why, :by)", move)
    return moves


def rollback_and_record(layout: StateLayout, target: str | None, by: str, why: str = MANUAL_ROLLBACK,
                        db: Database | None = None) -> dict:
    """`trainers.checkpoints.pointers.rollback(layout, target)` (to `last_good` when `target` is
    None, or to a checkpoint id, or to `base`), then the pointer moves recorded in the database.

    `by` says who asked (`recheck`, or `dreamctl <user>`); `why` defaults to a manual rollback (the
    gate's re-check passes `rolled_back`). `db` is an open store to write to; without one the state
    dir's database is opened, and when there is none yet (nothing ingested) the rollback still
    happens and only the record is skipped. Raises what `rollback` raises (CheckpointError,
    ValueError) before anything moves. Returns rollback's dict plus `recorded`: how many pointer
    moves were stored (0 when nothing moved or there is no database).
    """
    before = read_pointers(layout)
    result = rollback(layout, target)
    moves = _record_safely(layout, db, before, read_pointers(layout), why, by)
    return {**result, "recorded": len(moves)}


def _record_safely(layout: StateLayout, db: Database | None, before: dict, after: dict, why: str,
                   by: str) -> list[dict]:
    # The rollback has happened by now: a history row that cannot be written is logged, and must
    # not turn a successful rollback into a reported failure.
    if before == after:
        return []
    own = db is None
    try:
        if own:
            if not layout.database.exists():
                return []
            db = open_store(layout.database)
        return record_pointer_moves(db, before, after, why, by)
    except (sqlite3.Error, SchemaError, OSError) as exc:
        log.warning("pointer moved but its history row was not written", error=str(exc), why=why, by=by)
        return []
    finally:
        if own and db is not None:
            db.conn.close()


def roll_back(layout: StateLayout, target: str | None, by: str) -> dict:
    """A manual rollback: point `current` at `target` (an id or `base`; None: last_good), verified
    first; idempotent. Returns current, previous, changed, how many moves were recorded, and `by`."""
    return {**rollback_and_record(layout, target, by), "by": by}


def roll_back_offline(layout: StateLayout, target: str | None, by: str) -> dict:
    """The same, by dreamctl while no daemon runs: under the instance lock (AlreadyRunning if a
    daemon holds it)."""
    with InstanceLock(layout.lock_file).acquire(write_pid=False):
        return roll_back(layout, target, by)
