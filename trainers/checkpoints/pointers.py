"""The `current` and `last_good` pointers, rollback, and retention.

A pointer is a one-line file holding a checkpoint id, or `base` for the untrained model. It is
written with `write_atomically` (a fsynced temporary file, `os.replace`, then the folder fsynced):
a SIGKILL at any moment leaves either the old or the new line, never half of one. Rollback only
moves pointers (the checkpoints stay), so repeating it changes nothing: it is idempotent. A pointer
is never followed blindly: whoever loads what it names verifies it first (`verify_loadable`).
No torch here: dreamctl uses this module directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import structlog

from dreamd.trainers.atomic import write_atomically
from dreamd.trainers.checkpoints.manifest import (
    CheckpointError,
    Manifest,
    checkpoint_ids,
    parent_hint,
    read_manifest,
    remove_checkpoint,
    verify_checkpoint,
)

log = structlog.get_logger(__name__)

BASE = "base"
POINTERS = ("current", "last_good")


class CheckpointRoots(Protocol):
    """Where the checkpoints and their two pointers live. The daemon's StateLayout is one (it has
    these paths among others); the trainers need no more of it, so they take any such object."""

    @property
    def checkpoints(self) -> Path: ...

    @property
    def current_pointer(self) -> Path: ...

    @property
    def last_good_pointer(self) -> Path: ...


def pointer_path(layout: CheckpointRoots, name: str) -> Path:
    if name not in POINTERS:
        raise ValueError(f"unknown pointer {name!r}")
    return layout.current_pointer if name == "current" else layout.last_good_pointer


def read_pointer(layout: CheckpointRoots, name: str) -> str:
    """The id a pointer names, or `base` (also when the pointer was never written)."""
    try:
        value = pointer_path(layout, name).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return BASE
    return value or BASE


def set_pointer(layout: CheckpointRoots, name: str, value: str, verify: bool = True) -> None:
    """Point `name` at a checkpoint id (verified first, unless told not to) or at `base`."""
    if value != BASE and verify:
        verify_checkpoint(layout.checkpoints, value)
    path = pointer_path(layout, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, value + "\n")


def verify_loadable(layout: CheckpointRoots, checkpoint_id: str) -> Manifest:
    """Verify a checkpoint and every checkpoint its weights build on (a LoRA adapter trained on
    full weights needs those weights too)."""
    manifest = verify_checkpoint(layout.checkpoints, checkpoint_id)
    if manifest.base_weights:
        verify_loadable(layout, manifest.base_weights)
    return manifest


def rollback(layout: CheckpointRoots, target: str | None = None) -> dict:
    """Point `current` at `target` (an id, or `base`), or at `last_good` when no target is given.
    Only a checkpoint that verifies is accepted. Idempotent; returns what changed."""
    before = read_pointer(layout, "current")
    if target is None:
        target = read_pointer(layout, "last_good")
    if target != BASE:
        verify_loadable(layout, target)  # raises CheckpointError: a rollback never lands on a bad one
    if before != target:
        set_pointer(layout, "current", target, verify=False)
    log.info("rolled back", current=target, previous=before)
    return {"current": target, "previous": before, "changed": before != target}


def keep_set(layout: CheckpointRoots, keep_last: int) -> set[str]:
    """The newest `keep_last` checkpoints, every pointer's target, and what their weights build on."""
    ids = checkpoint_ids(layout.checkpoints)
    keep = set(ids[-keep_last:]) | {read_pointer(layout, name) for name in POINTERS}
    pending = list(keep)
    while pending:
        try:
            base = read_manifest(layout.checkpoints, pending.pop()).base_weights
        except (CheckpointError, ValueError):
            continue
        if base and base not in keep:
            keep.add(base)
            pending.append(base)
    keep.discard(BASE)
    return keep


def apply_retention(layout: CheckpointRoots, keep_last: int) -> list[str]:
    """Delete checkpoints outside `keep_set`; returns the removed ids."""
    keep = keep_set(layout, keep_last)
    removed = [cid for cid in checkpoint_ids(layout.checkpoints) if cid not in keep]
    for checkpoint_id in removed:
        remove_checkpoint(layout.checkpoints, checkpoint_id)
    return removed


def lineage(layout: CheckpointRoots) -> list[dict]:
    """Every checkpoint with its manifest facts and verification, oldest first (for dreamctl)."""
    pointers = {name: read_pointer(layout, name) for name in POINTERS}
    rows = []
    for checkpoint_id in checkpoint_ids(layout.checkpoints):
        row: dict = {"id": checkpoint_id, "pointers": [n for n, v in pointers.items() if v == checkpoint_id]}
        try:
            manifest = verify_checkpoint(layout.checkpoints, checkpoint_id)
            row.update(parent=manifest.parent, step=manifest.step, created_at=manifest.created_at,
                       mode=manifest.mode, examples=len(manifest.examples), metrics=manifest.metrics,
                       base_weights=manifest.base_weights, verified=True)
        except CheckpointError as exc:
            row.update(parent=parent_hint(layout.checkpoints, checkpoint_id), verified=False, error=str(exc))
        rows.append(row)
    return rows
