"""Versioned checkpoints: written atomically, verified before every load, pruned with care.

A checkpoint is `checkpoints/<id>/` holding its weights (a PEFT adapter in `adapter/` or a Hugging
Face safetensors model in `model/`), its optimizer and RNG state (safetensors + JSON) and, written
last, `manifest.json`: id, parent, step, created_at, mode, the training config, the ids of the
examples that made it and the sha256 of every other file. The order of writing is the guarantee:
files into `<id>.tmp/`, fsync, manifest, fsync, rename to `<id>/`, fsync the folder. A crash
anywhere leaves either a `.tmp/` (garbage, removed by `clean_staging`) or a complete checkpoint.

Verification accepts only what it can check: every file listed with a matching hash, nothing
unlisted, and only formats that cannot run code (safetensors, JSON, text); a pickle is refused
by name and by content, before anything could open it. This module imports no torch (dreamctl
lists and verifies checkpoints without it).
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dreamd.trainers.atomic import fsync_path, fsync_tree, sha256_file, staging_dir

MANIFEST = "manifest.json"
FORMAT = 1
# Formats that hold data, never code. Anything else in a checkpoint makes it unloadable.
SAFE_SUFFIXES = (".safetensors", ".json", ".md", ".txt", ".jinja")
PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # a pickle protocol >= 2 header; a torch.save zip archive
REQUIRED = ("format", "id", "parent", "step", "created_at", "mode", "config", "files", "examples")


class CheckpointError(Exception):
    """A checkpoint that must not be loaded; `path` names the offending file or folder."""

    def __init__(self, checkpoint_id: str, path: Path, reason: str):
        self.checkpoint_id, self.path, self.reason = checkpoint_id, path, reason
        super().__init__(f"checkpoint {checkpoint_id} refused: {path}: {reason}")


@dataclass
class Manifest:
    id: str
    parent: str | None
    step: int
    created_at: float
    mode: str
    config: dict
    files: dict[str, str]
    examples: list[str]
    base_weights: str | None = None  # a LoRA adapter's full-weight checkpoint; None: the base model
    metrics: dict = field(default_factory=dict)
    format: int = FORMAT

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2, sort_keys=True)


def new_checkpoint_id() -> str:
    """Sortable by creation time, unique without coordination: 20250101T120000123456Z-1a2b3c."""
    now = time.time()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{int(now % 1 * 1e6):06d}Z"
    return f"{stamp}-{secrets.token_hex(3)}"


def checkpoint_dir(root: Path, checkpoint_id: str) -> Path:
    if not checkpoint_id or "/" in checkpoint_id or checkpoint_id.startswith(".") or checkpoint_id.endswith(".tmp"):
        raise ValueError(f"not a checkpoint id: {checkpoint_id!r}")
    return root / checkpoint_id


Phase = Callable[[str], None]


def write_checkpoint(
    root: Path,
    manifest: Manifest,
    write_files: Callable[[Path], None],
    on_phase: Phase | None = None,
) -> Path:
    """Publish a checkpoint atomically. `write_files(tmp)` writes the payload; the manifest (with
    every file's hash) is written here, last. `on_phase` is told each phase (tests kill there)."""
    phase = on_phase or (lambda _name: None)
    final = checkpoint_dir(root, manifest.id)
    if final.exists():
        raise FileExistsError(f"checkpoint {manifest.id} exists already")
    tmp = staging_dir(final)
    try:
        write_files(tmp)
        phase("files_written")
        fsync_tree(tmp)
        phase("files_synced")
        manifest.files = {rel: sha256_file(tmp / rel) for rel in _payload_files(tmp)}
        manifest_path = tmp / MANIFEST
        manifest_path.write_text(manifest.to_json())
        fsync_path(manifest_path)
        phase("manifest_written")
    except Exception as exc:
        # A failed write (a full disk above all) leaves nothing behind: the half-written folder
        # would only hold the space that is missing. (A kill leaves it to clean_staging.)
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OSError(exc.errno, f"no space left on the device while writing checkpoint {manifest.id} "
                                     f"in {root}; nothing was kept, current and last_good are unchanged") from exc
        raise
    os.rename(tmp, final)
    phase("renamed")
    fsync_path(final.parent)
    phase("published")
    return final


def _payload_files(folder: Path) -> list[str]:
    return sorted(
        str(path.relative_to(folder))
        for path in folder.rglob("*")
        if path.is_file() and path != folder / MANIFEST
    )


def read_manifest(root: Path, checkpoint_id: str) -> Manifest:
    folder = checkpoint_dir(root, checkpoint_id)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise CheckpointError(checkpoint_id, folder, "no such checkpoint")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(checkpoint_id, path, "missing (the checkpoint was never completed)") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(checkpoint_id, path, f"not valid JSON: {exc}") from None
    missing = [key for key in REQUIRED if key not in raw] if isinstance(raw, dict) else list(REQUIRED)
    if missing:
        raise CheckpointError(checkpoint_id, path, "lacks " + ", ".join(missing))
    if raw["id"] != checkpoint_id:
        raise CheckpointError(checkpoint_id, path, f"names id {raw['id']!r}, not its folder's")
    known = set(Manifest.__dataclass_fields__)
    return Manifest(**{k: v for k, v in raw.items() if k in known})


def verify_checkpoint(root: Path, checkpoint_id: str) -> Manifest:
    """The manifest of a checkpoint whose every file is listed, safe and hashes as recorded;
    else CheckpointError naming the first offending file."""
    manifest = read_manifest(root, checkpoint_id)
    folder = checkpoint_dir(root, checkpoint_id)
    present = set(_payload_files(folder))
    for rel in sorted(present | set(manifest.files)):
        path = folder / rel
        if rel not in manifest.files:
            raise CheckpointError(checkpoint_id, path, "not listed in the manifest")
        if not path.suffix or path.suffix not in SAFE_SUFFIXES:
            raise CheckpointError(checkpoint_id, path, "not a safe format (only safetensors, JSON, text)")
        if rel not in present:
            raise CheckpointError(checkpoint_id, path, "listed in the manifest but missing")
        if path.suffix == ".safetensors" and _starts_like_pickle(path):
            raise CheckpointError(checkpoint_id, path, "holds a pickle, not safetensors")
        if sha256_file(path) != manifest.files[rel]:
            raise CheckpointError(checkpoint_id, path, "sha256 differs from the manifest (corrupt or changed)")
    return manifest


def _starts_like_pickle(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(4)
    return any(head.startswith(magic) for magic in PICKLE_MAGIC)


def parent_hint(root: Path, checkpoint_id: str) -> str | None:
    """The parent a (possibly damaged) checkpoint names, read as leniently as possible."""
    try:
        raw = json.loads((checkpoint_dir(root, checkpoint_id) / MANIFEST).read_text(encoding="utf-8"))
        parent = raw.get("parent")
        return parent if isinstance(parent, str) and parent else None
    except (OSError, ValueError, AttributeError):
        return None


def clean_staging(root: Path) -> list[str]:
    """Remove leftovers of interrupted writes (and deletions); returns their names."""
    removed = []
    if root.is_dir():
        for leftover in sorted(root.glob("*.tmp")):
            shutil.rmtree(leftover, ignore_errors=True)
            removed.append(leftover.name)
    return removed


def checkpoint_ids(root: Path) -> list[str]:
    """Every published checkpoint folder, oldest first (ids sort by creation time)."""
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.endswith(".tmp"))


def remove_checkpoint(root: Path, checkpoint_id: str) -> None:
    """Rename first (atomic), then delete: a crash mid-delete leaves only a `.tmp` to clean."""
    folder = checkpoint_dir(root, checkpoint_id)
    doomed = folder.with_name(folder.name + ".tmp")
    os.rename(folder, doomed)
    fsync_path(root)
    shutil.rmtree(doomed, ignore_errors=True)
