"""Writing files and directories so that readers see all of it or none of it.

A file: write `.<name>.<pid>.tmp` beside it, fsync, `os.replace`, fsync the folder. A directory:
write into `<name>.tmp/`, fsync every file, rename to `<name>/`, fsync the parent. A crash at any
point leaves the old version or the new one whole; a leftover temporary is garbage to remove.
This is the one place the daemon and the trainers write a file atomically.
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


def write_atomically(path: Path, data: bytes | str, durable: bool = True) -> None:
    """Replace `path` with `data` in one step. `durable=False` skips the fsyncs: still atomic for
    readers, but a power loss may bring back the old version (fine for status files)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk or a kill mid-write leaves no orphan behind
        raise
    if durable:
        fsync_path(path.parent)


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
