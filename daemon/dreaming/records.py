"""Dreams in the database: every dream stored with its provenance, and read back for tracing.

A dream's row holds what produced it (memory node ids, the walk, the fragments as shown, the
temperature, the seed, the model), what it is (scenario, response) and how it was judged (every
score, the total, the decision and its reasons). `dream_memories` indexes the other direction:
from a memory node to the dreams, and so to the training examples, it caused.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
from sqlite_utils import Database

from dreamd.daemon.dreaming.dreams import Dream
from dreamd.memory_graph.database.store import blob_vector, vector_blob, write

TRAINABLE = ("accepted", "approved")  # statuses a training round may take


def status_of(dream: Dream, review: bool) -> str:
    if not dream.accepted:
        return "rejected"
    return "pending_review" if review else "accepted"


def save_dreams(db: Database, dreams: list[Dream], *, batch: str, model: str, seed: int, review: bool) -> list[int]:
    """Store a batch in one transaction; sets and returns each dream's id."""
    now = time.time()
    with write(db):
        for dream in dreams:
            cursor = db.execute(
                "INSERT INTO dreams (batch, created_at, model, seed, node_ids, walk, fragments, temperature, scenario, "
                "response, generated_tokens, failure, scores, total, accepted, reasons, status, vector, kind, target, "
                "teacher_top_k) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (batch, now, model, seed, json.dumps(dream.node_ids), json.dumps(dream.walk),
                 json.dumps(dream.fragments, ensure_ascii=False), dream.temperature, dream.scenario, dream.response,
                 dream.generated_tokens, dream.failure,
                 json.dumps({n: s.to_dict() for n, s in dream.scores.items()}, ensure_ascii=False),
                 dream.total, int(dream.accepted), json.dumps(dream.reasons, ensure_ascii=False),
                 status_of(dream, review), vector_blob(dream.vector) if dream.vector is not None else None,
                 dream.kind, dream.target, dream.teacher.to_bytes() if dream.teacher is not None else None),
            )
            dream.id = cursor.lastrowid
            db.conn.executemany("INSERT INTO dream_memories (dream_id, position, node_id) VALUES (?, ?, ?)",
                                [(dream.id, i, node) for i, node in enumerate(dream.node_ids)])
    return [d.id for d in dreams]


def prior_vectors(db: Database, limit: int = 50_000) -> np.ndarray | None:
    """Embeddings of dreams accepted and not yet trained on: a near-duplicate of one of them adds
    nothing to the next round (a fact rehearsed again in a later round is wanted). The newest
    `limit`, which bounds the similarity matrix."""
    rows = db.execute(
        "SELECT vector FROM dreams WHERE accepted = 1 AND trained_in IS NULL AND vector IS NOT NULL "
        "ORDER BY id DESC LIMIT ?", (limit,)
    ).fetchall()
    return np.stack([blob_vector(r[0]) for r in rows]) if rows else None


def load_dream(db: Database, dream_id: int) -> dict[str, Any] | None:
    """One dream with its provenance, JSON fields decoded, the vector left out; `teacher_top_k`
    says only whether the teacher's distribution was kept (its bytes are for training)."""
    cursor = db.execute("SELECT * FROM dreams WHERE id = ?", (dream_id,))
    names = [c[0] for c in cursor.description]
    row = cursor.fetchone()
    if row is None:
        return None
    out = dict(zip(names, row))
    out.pop("vector")
    out["teacher_top_k"] = out["teacher_top_k"] is not None
    for key in ("node_ids", "walk", "fragments", "scores", "reasons"):
        out[key] = json.loads(out[key])
    out["accepted"] = bool(out["accepted"])
    out["memories"] = [r[0] for r in db.execute(
        "SELECT node_id FROM dream_memories WHERE dream_id = ? ORDER BY position", (dream_id,)).fetchall()]
    return out


def untrained_memories(db: Database) -> np.ndarray:
    """The ids of the memories no dream that was trained on has used yet, ascending."""
    rows = db.execute(
        "SELECT id FROM memory_nodes n WHERE NOT EXISTS (SELECT 1 FROM dream_memories m JOIN dreams d "
        "ON d.id = m.dream_id WHERE m.node_id = n.id AND d.trained_in IS NOT NULL) ORDER BY id").fetchall()
    return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
