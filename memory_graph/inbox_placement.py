"""Where a file goes in an inbox folder, under what name, and how it gets there durably.

Names are made safe before they are used in another folder: a name near the file system's limit
gets no room for `~2` or `.error.json`, so long (or undecodable) names are shortened, and the
original goes in the quarantine report. A name already taken gets a tag, never a scan of `~2`,
`~3`, ...: the file's inode (so a re-run after a crash finds its own earlier link) or a random
one. Moves out of processing/ link then unlink, so two ingesters finishing files of the same name
cannot clobber each other. Everything written here is created with O_EXCL | O_NOFOLLOW: never an
existing file, never through somebody's symlink.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import time
from pathlib import Path

# Longest name (UTF-8 bytes) used in processing/, done/ and quarantine/: under NAME_MAX (255) with
# room for a `~i<inode>` collision suffix and `.error.json` (and the report's `.tmp` staging name).
SAFE_NAME_BYTES = 200
COPY_CHUNK = 1 << 20


# -- names --------------------------------------------------------------------------------------

def printable(name: str) -> str:
    """A name as text that can always be written (undecodable bytes as \\x.. escapes)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def safe_name(name: str) -> str:
    """`name` if it is short enough and valid UTF-8; else a shortened one that keeps the start, a
    hash of the whole name (so two long names stay apart) and a short suffix (`.jsonl`)."""
    raw = name.encode("utf-8", "surrogateescape")
    try:
        raw.decode("utf-8")
        if len(raw) <= SAFE_NAME_BYTES:
            return name
    except UnicodeDecodeError:
        pass
    text = printable(name).replace("/", "_")
    stem, dot, suffix = text.rpartition(".")
    suffix = f".{suffix}" if dot and stem and len(suffix.encode()) <= 16 else ""
    tag = "~" + hashlib.blake2b(raw, digest_size=6).hexdigest()
    room = SAFE_NAME_BYTES - len(tag) - len(suffix.encode())
    head = text[: len(text) - len(suffix)].encode()[:room].decode("utf-8", "ignore")
    return f"{head}{tag}{suffix}"


def is_no_space(exc: BaseException) -> bool:
    """A full disk (or quota): nothing to do with the file at hand; wait for space."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def _with_tag(name: str, tag: str) -> str:
    stem, dot, suffix = name.partition(".")
    return f"{stem}~{tag}{dot}{suffix}"  # the suffix kept last, for tools


def free_name(folder: Path, name: str, inode: int | None = None) -> Path:
    """`folder/name` (made safe), or when taken `name~i<inode>` (the same name for the same file,
    which lets a re-run find its own earlier link) or `name~<random>`: never a scan of `~2`,
    `~3`, ... (20,000 files of one name would make that quadratic)."""
    name = safe_name(name)
    candidate = folder / name
    if not os.path.lexists(candidate):
        return candidate
    if inode is not None:
        candidate = folder / _with_tag(name, f"i{inode}")
        if not os.path.lexists(candidate):
            return candidate
    while os.path.lexists(candidate := folder / _with_tag(name, secrets.token_hex(4))):
        pass
    return candidate


# -- moves --------------------------------------------------------------------------------------

def rename_no_follow(path: Path, target: Path) -> Path:
    """Rename whatever `path` is (nothing is opened or followed) to `target`, or a free name."""
    if os.path.lexists(target):
        target = free_name(target.parent, target.name)
    os.rename(path, target)
    return target


def move_no_replace(path: Path, folder: Path, name: str | None = None) -> Path:
    """Move into `folder` without ever overwriting: see move_to."""
    return move_to(path, _target(path, folder, name or path.name))


def _target(path: Path, folder: Path, name: str) -> Path:
    """Where the file at `path` goes in `folder`: where it is linked already (a crash between link
    and unlink: under one of the two names it could have had), else a free name. No scan."""
    name = safe_name(name)
    inode = os.lstat(path).st_ino
    for candidate in (folder / name, folder / _with_tag(name, f"i{inode}")):
        if os.path.lexists(candidate) and os.path.samefile(candidate, path):
            return candidate
    return free_name(folder, name, inode)


def move_to(path: Path, target: Path) -> Path:
    """Link then unlink, so two ingesters finishing files of the same name cannot clobber each
    other; after a crash between the two, the re-run finds the link and only unlinks."""
    while True:
        if os.path.lexists(target) and os.path.samefile(target, path):
            os.unlink(path)
            return target
        try:
            os.link(path, target, follow_symlinks=False)
        except FileExistsError:
            target = free_name(target.parent, target.name)  # taken since: another name
            continue
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EXDEV, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            os.rename(path, target)  # a file system without hard links
            return target
        os.unlink(path)
        return target


def move_to_quarantine(path: Path, folder: Path, reason: str, where: str | None, move=None, **details) -> Path:
    """Move `path` into the quarantine `folder` with <name>.error.json beside it, written first
    (atomically) and removed again if the move fails: never a report without its file."""
    if move is None:  # a regular file: linked, under the name a crashed run may have linked it already
        target = _target(path, folder, path.name)
        move = move_to
    else:
        target = free_name(folder, path.name)
    report = {"file": target.name, "original_name": printable(path.name), "reason": reason, "where": where,
              "quarantined_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **details}
    report_path = folder / f"{target.name}.error.json"
    _write_new_file(report_path, (json.dumps(report, indent=2, ensure_ascii=False) + "\n").encode())
    try:
        return move(path, target)
    except BaseException:
        report_path.unlink(missing_ok=True)  # no report without its file
        raise


def prune_older(folder: Path, older_than_seconds: float, now: float | None = None) -> int:
    """Delete files that moved into `folder` (done/) more than `older_than_seconds` ago; returns
    how many. A file's ctime is when it was linked there (its mtime is the log's own age)."""
    cutoff = (time.time() if now is None else now) - older_than_seconds
    removed = 0
    with os.scandir(folder) as entries:
        for entry in entries:
            try:
                if entry.stat(follow_symlinks=False).st_ctime < cutoff:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                continue
    return removed


# -- durable writes -----------------------------------------------------------------------------

def fsync(path: Path) -> None:
    """Flush a file's data, or a folder's entries, to disk: a rename is durable only once the
    folder is synced. (Kept here, not shared: this package depends on no other dreamd package.)"""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_into(source_fd: int, target: Path) -> None:
    """Copy from a descriptor into a new file (never one that exists: O_EXCL), fsynced."""
    out = _create(target)
    try:
        offset = 0
        while block := os.pread(source_fd, COPY_CHUNK, offset):
            _write_all(out, block)
            offset += len(block)
        os.fsync(out)
    finally:
        os.close(out)


def _write_new_file(path: Path, data: bytes) -> None:
    """Write `path` whole or not at all: a staged dotfile, fsync, rename. The staged file is
    created with O_EXCL | O_NOFOLLOW (nobody's symlink is written through) and removed on failure."""
    staged = path.with_name(f".{path.name}.tmp")
    staged.unlink(missing_ok=True)  # a crash's leftover
    try:
        _copy_bytes(data, staged)
        os.rename(staged, path)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise


def _copy_bytes(data: bytes, target: Path) -> None:
    out = _create(target)
    try:
        _write_all(out, data)
        os.fsync(out)
    finally:
        os.close(out)


def _create(path: Path) -> int:
    # O_EXCL | O_NOFOLLOW: never an existing file, never through somebody's symlink.
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
