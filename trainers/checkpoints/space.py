"""Room on the disk for a checkpoint: a round that could not write its checkpoint never starts.

A training round costs minutes to hours; finding out at its end that the checkpoint does not fit
wastes all of it (the write itself fails cleanly: see `write_checkpoint`). So before a round, the
space the checkpoint will take is estimated, from the newest checkpoint of the same mode when
there is one (the best predictor: same model, same settings), else from the parameters (weights
plus optimizer moments), with a margin, and compared with what the file system has free.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from dreamd.trainers.checkpoints.manifest import CheckpointError, checkpoint_dir, checkpoint_ids, read_manifest

MARGIN = 1.25  # files a checkpoint adds over time (tokenizer, config) and file-system overhead
SLACK_BYTES = 32 * 1024 * 1024  # the database, logs and reports keep growing during the round


class NoSpace(OSError):
    """Not enough free space to write a checkpoint (an OSError with errno ENOSPC)."""

    def __init__(self, message: str):
        super().__init__(errno.ENOSPC, message)


def folder_bytes(folder: Path) -> int:
    return sum(entry.stat().st_size for entry in folder.rglob("*") if entry.is_file())


def checkpoint_bytes_needed(root: Path, mode: str, trainable_bytes: int, model_bytes: int) -> int:
    """Bytes to keep free for the next checkpoint of `mode`. `trainable_bytes`: the trainable
    parameters (saved, with optimizer state about twice their size); `model_bytes`: the whole
    model, saved too in full mode."""
    estimate = trainable_bytes * 3 + (model_bytes if mode == "full" else 0)
    for checkpoint_id in reversed(checkpoint_ids(root)):
        try:
            if read_manifest(root, checkpoint_id).mode == mode:
                estimate = max(estimate, folder_bytes(checkpoint_dir(root, checkpoint_id)))
                break
        except (CheckpointError, OSError):
            continue
    return int(estimate * MARGIN) + SLACK_BYTES


def free_bytes(folder: Path) -> int:
    stats = os.statvfs(folder)
    return stats.f_bavail * stats.f_frsize


def require_free_space(folder: Path, needed: int) -> None:
    """Raise NoSpace unless `folder`'s file system has `needed` bytes free."""
    free = free_bytes(folder)
    if free < needed:
        raise NoSpace(f"{folder}: {free / 2**20:.0f} MiB free, a checkpoint needs about {needed / 2**20:.0f} MiB; "
                      "training round not started (free some space; the next cycle tries again)")
