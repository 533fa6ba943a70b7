"""The inbox folders and every move between them (maildir semantics).

    writer:   tmp/<x>  --rename-->  new/<name>
    ingester: new/<name> --rename--> processing/<name> --(commit)--> done/<name>
                                                       \\-------------> quarantine/<name> + <name>.error.json

A rename within one file system is atomic, so a file is always in exactly one folder and two
ingesters cannot both claim it: the loser's rename fails. While a file is worked on, its ingester
holds an flock on it; the kernel drops the lock when that process dies, so what is in
processing/ unlocked is a crash leftover, and a live ingester's files are never run twice.
Names starting with "." and everything in tmp/ are never read. Moves out of processing/ need no
directory fsync: if one is lost in a crash the file reappears in processing/, is run again, and
its sha256 is already in the database.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from dreamd.memory_graph.settings import InboxSettings

FOLDERS = ("tmp", "new", "processing", "done", "quarantine")


@dataclass
class Claimed:
    path: Path  # in processing/
    size: int
    mtime_ns: int
    fd: int  # open and flocked until the file leaves processing/

    def read(self) -> bytes:
        # Through the locked descriptor (a dup shares the lock; closing it keeps the lock).
        with os.fdopen(os.dup(self.fd), "rb") as handle:
            handle.seek(0)
            return handle.read()

    def unlock(self) -> None:
        # Once only: a closed descriptor's number is soon reused by some other open file.
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


class Inbox:
    def __init__(self, folder: Path, settings: InboxSettings):
        """`folder` holds the maildir folders (created here when missing): tmp, new, processing,
        done and quarantine."""
        self.settings = settings
        self.tmp, self.new, self.processing, self.done, self.quarantined = (folder / name for name in FOLDERS)
        for folder in (self.tmp, self.new, self.processing, self.done, self.quarantined):
            folder.mkdir(mode=0o750, parents=True, exist_ok=True)

    # -- writers ---------------------------------------------------------------------------
    def drop(self, source: Path) -> Path:
        """Put a copy of `source` into new/ the safe way: copy into tmp/, fsync, rename."""
        staged = self.tmp / f"{source.name}.{os.getpid()}.{secrets.token_hex(4)}"
        # copy2 keeps the source's mtime, so an old log is stable at once; a fresh one waits.
        shutil.copy2(source, staged)
        _fsync(staged)
        target = _free_name(self.new, source.name)
        os.rename(staged, target)
        _fsync(self.new)
        return target

    # -- the ingester ----------------------------------------------------------------------
    def ready(self, now: float | None = None, trusted: frozenset[str] = frozenset()) -> list[Path]:
        """Files in new/ that may be claimed, oldest first: regular, not dotfiles, and unchanged
        for stable_seconds (a writer that appends straight into new/ keeps its mtime fresh).
        `trusted` names were renamed in complete by this process and need no wait."""
        now = time.time() if now is None else now
        found = []
        with os.scandir(self.new) as entries:
            for entry in entries:
                if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                    continue
                try:
                    stat = entry.stat(follow_symlinks=False)
                except FileNotFoundError:  # claimed by another ingester meanwhile
                    continue
                if entry.name in trusted or now - stat.st_mtime >= self.settings.stable_seconds:
                    found.append((stat.st_mtime_ns, entry.name))
        return [self.new / name for _, name in sorted(found)]

    def claim(self, path: Path) -> Claimed | None:
        """Rename new/<name> into processing/; None if another ingester took it first."""
        try:
            before = path.stat()
            target = _free_name(self.processing, path.name)
            os.rename(path, target)
        except FileNotFoundError:
            return None
        fd = _locked(target)
        if fd is None:  # a crash-recovering ingester saw it in processing/ first: it is theirs
            return None
        after = os.fstat(fd)
        if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
            # Still being written through a descriptor opened before the rename: put it back.
            os.rename(target, _free_name(self.new, path.name))
            os.close(fd)
            return None
        return Claimed(target, after.st_size, after.st_mtime_ns, fd)

    def leftovers(self) -> list[Claimed]:
        """What a crashed ingester left in processing/: to be run again."""
        claimed = []
        for path in sorted(self.processing.iterdir()):
            if path.name.startswith(".") or not path.is_file():
                continue
            fd = _locked(path)
            if fd is not None:  # unlocked: its ingester is gone
                stat = os.fstat(fd)
                claimed.append(Claimed(path, stat.st_size, stat.st_mtime_ns, fd))
        return claimed

    def finish(self, claimed: Claimed) -> Path | None:
        """processing/ -> done/, after the database commit."""
        return self._leave(claimed, lambda path: _move_no_replace(path, self.done))

    def quarantine(self, claimed: Claimed, reason: str, where: str | None = None, **details) -> Path | None:
        """processing/ -> quarantine/, with <name>.error.json beside it (written first, atomically)."""
        return self._leave(claimed, lambda path: self._quarantine(path, reason, where, **details))

    def _leave(self, claimed: Claimed, move) -> Path | None:
        try:
            return move(claimed.path)
        except FileNotFoundError:
            return None  # moved already: a recovering ingester raced this one and both saw it through
        finally:
            claimed.unlock()

    def _quarantine(self, path: Path, reason: str, where: str | None, **details) -> Path:
        target = _free_name(self.quarantined, path.name)
        report = {"file": target.name, "original_name": path.name, "reason": reason, "where": where,
                  "quarantined_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **details}
        staged = self.quarantined / f".{target.name}.error.json.tmp"
        staged.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        _fsync(staged)
        os.rename(staged, self.quarantined / f"{target.name}.error.json")
        return _move_no_replace(path, self.quarantined, target.name)


def _fsync(path: Path) -> None:
    """Flush a file's data, or a folder's entries, to disk: a rename is durable only once the
    folder is synced. (Kept here, not shared: this package depends on no other dreamd package.)"""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _locked(path: Path) -> int | None:
    """An open descriptor holding an exclusive flock on `path`, or None if someone holds it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _free_name(folder: Path, name: str) -> Path:
    """`folder/name`, or `folder/name~2`-style when taken (the suffix kept last, for tools)."""
    candidate = folder / name
    stem, dot, suffix = name.partition(".")
    counter = 1
    while candidate.exists():
        counter += 1
        candidate = folder / (f"{stem}~{counter}{dot}{suffix}")
    return candidate


def _move_no_replace(path: Path, folder: Path, name: str | None = None) -> Path:
    """Move without ever overwriting: link then unlink, so two ingesters finishing files of the
    same name cannot clobber each other. After a crash between the two, the file is in both
    places; the re-run finds it already linked and only unlinks."""
    name = name or path.name
    while True:
        target = _free_name(folder, name)
        linked = _already_linked(path, folder, name, target)
        if linked is not None:
            os.unlink(path)
            return linked
        try:
            os.link(path, target)
        except FileExistsError:
            continue  # taken between the check and the link: pick the next name
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EXDEV, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            os.rename(path, target)  # a file system without hard links
            return target
        os.unlink(path)
        return target


def _already_linked(path: Path, folder: Path, name: str, free: Path) -> Path | None:
    """A name in `folder` that is already this very file (a crash between link and unlink)."""
    candidate, stem_suffix = folder / name, name.partition(".")
    counter = 1
    while candidate != free and candidate.exists():
        if os.path.samefile(candidate, path):
            return candidate
        counter += 1
        candidate = folder / f"{stem_suffix[0]}~{counter}{stem_suffix[1]}{stem_suffix[2]}"
    return None
