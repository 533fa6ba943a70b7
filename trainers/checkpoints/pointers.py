"""The `current` and `last_good` pointers, rollback, choosing what to load, and retention.

A pointer is a one-line file holding a checkpoint id, or `base` for the untrained model. It is
replaced with `os.replace` from a fsynced temporary file, then the folder is fsynced: a SIGKILL at
any moment leaves either the old or the new line, never half of one. Rollback only moves pointers
(the checkpoints stay), so repeating it changes nothing: it is idempotent. A pointer that names a
checkpoint failing verification is never followed blindly: loading walks back to its parent,
then `last_good`, then the base model, logging each refusal with the file that caused it.
No torch here: dreamctl uses this module directly.
"""

from __future__ import annotations

import os
from pathlib import Path

import structlog
from dreamd.daemon.service.state_dir import StateLayout
from dreamd.trainers.atomic import fsync_path
from dreamd.trainers.checkpoints.manifest import (
    CheckpointError,
    Manifest,
    checkpoint_ids,
    clean_staging,
    parent_hint,
    read_manifest,
    remove_checkpoint,
    verify_checkpoint,
)

log = structlog.get_logger(__name__)

BASE = "base"
POINTERS = ("current", "last_good")


def pointer_path(layout: StateLayout, name: str) -> Path:
    if name not in POINTERS:
        raise ValueError(f"unknown pointer {name!r}")
    return layout.current_pointer if name == "current" else layout.last_good_pointer


def read_pointer(layout: StateLayout, name: str) -> str:
    """The id a pointer names, or `base` (also when the pointer was never written)."""
    try:
        value = pointer_path(layout, name).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return BASE
    return value or BASE


def set_pointer(layout: StateLayout, name: str, value: str, verify: bool = True) -> None:
    """Point `name` at a checkpoint id (verified first, unless told not to) or at `base`."""
    if value != BASE and verify:
        verify_checkpoint(layout.checkpoints, value)
    path = pointer_path(layout, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(value + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


def verify_loadable(layout: StateLayout, checkpoint_id: str) -> Manifest:
    """Verify a checkpoint and every checkpoint its weights build on (a LoRA adapter trained on
    full weights needs those weights too)."""
    manifest = verify_checkpoint(layout.checkpoints, checkpoint_id)
    if manifest.base_weights:
        verify_loadable(layout, manifest.base_weights)
    return manifest


def resolve(layout: StateLayout, wanted: str) -> tuple[str, list[CheckpointError]]:
    """The checkpoint to load for `wanted` (an id or `base`): itself if it verifies, else its
    nearest verified ancestor, else last_good, else `base`. Returns the choice and the refusals."""
    errors: list[CheckpointError] = []
    tried: set[str] = set()
    candidate: str | None = wanted
    fallback_last_good = True
    while candidate and candidate != BASE and candidate not in tried:
        tried.add(candidate)
        try:
            verify_loadable(layout, candidate)
            return candidate, errors
        except CheckpointError as exc:
            errors.append(exc)
            log.error("checkpoint refused; trying its parent", checkpoint=candidate, file=str(exc.path),
                      reason=exc.reason)
            candidate = parent_hint(layout.checkpoints, candidate)
        if candidate is None and fallback_last_good:
            fallback_last_good = False
            candidate = read_pointer(layout, "last_good")
    return BASE, errors


def resolve_pointer(layout: StateLayout, name: str = "current") -> tuple[str, list[CheckpointError]]:
    """What to load for a pointer, after removing leftovers of interrupted writes."""
    clean_staging(layout.checkpoints)
    return resolve(layout, read_pointer(layout, name))


def latest_checkpoint(layout: StateLayout) -> str:
    """The newest checkpoint that verifies (after removing leftovers), or `base`."""
    clean_staging(layout.checkpoints)
    for checkpoint_id in reversed(checkpoint_ids(layout.checkpoints)):
        try:
            verify_loadable(layout, checkpoint_id)
            return checkpoint_id
        except CheckpointError as exc:
            log.error("checkpoint refused", checkpoint=checkpoint_id, file=str(exc.path), reason=exc.reason)
    return BASE


def rollback(layout: StateLayout, target: str | None = None) -> dict:
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


def keep_set(layout: StateLayout, keep_last: int) -> set[str]:
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


def apply_retention(layout: StateLayout, keep_last: int) -> list[str]:
    """Delete checkpoints outside `keep_set`; returns the removed ids."""
    keep = keep_set(layout, keep_last)
    removed = [cid for cid in checkpoint_ids(layout.checkpoints) if cid not in keep]
    for checkpoint_id in removed:
        remove_checkpoint(layout.checkpoints, checkpoint_id)
    return removed


def lineage(layout: StateLayout) -> list[dict]:
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
