"""The human review queue: with `dreams.review` on, an accepted dream waits here
(`pending_review`) until a person approves it (it may then be trained on) or rejects it.

This is the API `dreamctl review` is built on; every decision is logged in `dream_reviews` with
who made it and why, and a dream is decided once (a second decision is refused, not overwritten).
"""

from __future__ import annotations

import getpass
import time

from sqlite_utils import Database

from dreamd.daemon.dreaming.records import load_dream
from dreamd.memory_graph.database.store import write

DECISIONS = {"approved": "approved", "rejected": "review_rejected"}  # decision -> the dream's status


class ReviewError(ValueError):
    """The dream is unknown or not waiting for review."""


def pending(db: Database, limit: int = 100) -> list[dict]:
    """Dreams waiting for review, oldest first, with their provenance."""
    ids = [r[0] for r in db.execute(
        "SELECT id FROM dreams WHERE status = 'pending_review' ORDER BY id LIMIT ?", (limit,)).fetchall()]
    return [load_dream(db, i) for i in ids]


def decide(db: Database, dream_id: int, decision: str, note: str = "", reviewer: str | None = None) -> dict:
    """Approve or reject one pending dream; returns it as it now is."""
    if decision not in DECISIONS:
        raise ReviewError(f"decision must be approved or rejected (got {decision!r})")
    reviewer = reviewer or _user()
    with write(db):
        row = db.execute("SELECT status FROM dreams WHERE id = ?", (dream_id,)).fetchone()
        if row is None:
            raise ReviewError(f"no dream {dream_id}")
        if row[0] != "pending_review":
            raise ReviewError(f"dream {dream_id} is {row[0]}, not waiting for review")
        db.execute("UPDATE dreams SET status = ? WHERE id = ?", (DECISIONS[decision], dream_id))
        db.execute("INSERT INTO dream_reviews (dream_id, decision, reviewer, note, at) VALUES (?, ?, ?, ?, ?)",
                   (dream_id, decision, reviewer, note, time.time()))
    return load_dream(db, dream_id)


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (containers): still record something
        return "unknown"
