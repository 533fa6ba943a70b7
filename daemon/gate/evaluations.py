"""The `evaluations` table (migration m004): every evaluation the gate made, with its decision.

One row per evaluation: the checkpoint, why it was evaluated (`purpose`: base, reference,
candidate, recheck), the suite's key, the metrics (JSON), the behavioural fingerprint (float32
blob, one row per fingerprint prompt), the decision and its reasons.

Read by the gate (cached metrics per suite key, the promoted history for forgetting), by
`dreamctl status` without the daemon and by `dreamctl report`. So this module imports no torch,
and nothing at all at the top that `dreamctl status` would pay for (numpy, sqlite_utils): it takes
a sqlite_utils Database or a plain sqlite3 connection, and only the two functions that handle
fingerprints import numpy.
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from sqlite_utils import Database

# Purposes whose decision is the gate's verdict on a checkpoint (what status shows as the last decision).
DECIDING_PURPOSES = ("candidate", "recheck")


def stored(db: Database | sqlite3.Connection, checkpoint: str, suite_key: str,
           prompts: int) -> tuple[dict[str, Any], np.ndarray] | None:
    """The newest stored (metrics, fingerprint) of this checkpoint on this suite, or None; the
    fingerprint has one row per fingerprint prompt."""
    return _newest(db, "suite_key = ?", checkpoint, suite_key, prompts)


def stored_general(db: Database | sqlite3.Connection, checkpoint: str, general_key: str,
                   prompts: int) -> tuple[dict[str, Any], np.ndarray] | None:
    """The newest stored (metrics, fingerprint) of this checkpoint measured on the same shipped
    banks (`general_key`), whatever the memories were then: its GENERAL_METRICS hold now."""
    return _newest(db, "json_extract(metrics, '$.general_key') = ?", checkpoint, general_key, prompts)


def _newest(db: Database | sqlite3.Connection, condition: str, checkpoint: str, key: str,
            prompts: int) -> tuple[dict[str, Any], np.ndarray] | None:
    row = db.execute(f"SELECT metrics, fingerprint FROM evaluations WHERE checkpoint = ? AND {condition} "
                     "ORDER BY id DESC LIMIT 1", (checkpoint, key)).fetchone()
    if row is None:
        return None
    from dreamd.memory_graph.database.store import blob_vector  # numpy: see the module's docstring

    return json.loads(row[0]), blob_vector(row[1]).reshape(prompts, -1)


def record(db: Database, checkpoint: str, purpose: str, suite_key: str, metrics: dict[str, Any],
           fingerprint: Any, decision: str, reasons: list[str], seconds: float,
           compared_to: str | None = None) -> None:
    """Store one evaluation (in its own write transaction: `db` is the memory-graph store)."""
    import numpy as np  # see the module's docstring

    from dreamd.memory_graph.database.store import vector_blob, write

    with write(db):
        db.execute(
            "INSERT INTO evaluations (checkpoint, purpose, suite_key, evaluated_at, seconds, metrics, fingerprint, "
            "decision, reasons, compared_to) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (checkpoint, purpose, suite_key, time.time(), seconds, json.dumps(metrics),
             vector_blob(np.asarray(fingerprint, dtype=np.float32).ravel()), decision, json.dumps(reasons),
             compared_to))


def promoted_history(db: Database | sqlite3.Connection) -> list[dict[str, float]]:
    """Slice losses of the base and every promoted checkpoint, oldest first."""
    rows = db.execute(
        "SELECT metrics FROM evaluations WHERE decision IN ('promoted', 'baseline') ORDER BY id").fetchall()
    return [json.loads(m).get("slice_losses", {}) for (m,) in rows]


def last_decision(db: Database | sqlite3.Connection) -> dict[str, Any] | None:
    """The newest gate or re-check decision, for `dreamctl status`: checkpoint, purpose, decision,
    reasons and when (`at`)."""
    marks = ", ".join("?" for _ in DECIDING_PURPOSES)
    row = db.execute(
        "SELECT checkpoint, purpose, decision, reasons, evaluated_at FROM evaluations "
        f"WHERE purpose IN ({marks}) ORDER BY id DESC LIMIT 1", DECIDING_PURPOSES).fetchone()
    if row is None:
        return None
    return {"checkpoint": row[0], "purpose": row[1], "decision": row[2], "reasons": json.loads(row[3]),
            "at": row[4]}
