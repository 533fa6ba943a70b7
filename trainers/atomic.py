"""Publishing a directory so that readers see all of it or none of it.

Write into `<name>.tmp/`, fsync every file, rename to `<name>/`, fsync the parent. A crash at any
point leaves either no `<name>/` or a complete one; a leftover `.tmp/` is garbage to remove.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    for folder, _dirs, files in os.walk(root):
        for name in files:
            fsync_path(Path(folder) / name)
        fsync_path(Path(folder))


def staging_dir(final: Path) -> Path:
    """A fresh, empty `<final>.tmp/` beside `final` (a leftover from a crash is removed)."""
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def publish_dir(tmp: Path, final: Path) -> Path:
    fsync_tree(tmp)
    os.rename(tmp, final)
    fsync_path(final.parent)
    return final


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
