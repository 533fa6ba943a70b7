"""Taking files out of new/ (or back from a crashed run's processing/) without trusting them.

new/ may be writable by a group of people, so nothing found there is trusted: a file is opened
only with O_NOFOLLOW | O_NONBLOCK (a symlink swapped in fails to open, a FIFO opens without
waiting for a writer) and accepted only if fstat on that descriptor says it is a regular file;
it is read through that descriptor only. Anything else (FIFO, symlink, directory, socket) is a
NotRegular, for the Inbox to set aside. While a file is worked on, its ingester holds an flock on
it; the kernel drops the lock when that process dies, so what is in processing/ unlocked is a
crash leftover, and a live ingester's files are never run twice.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat as stat_mode
from dataclasses import dataclass
from pathlib import Path

from dreamd.memory_graph.inbox_placement import free_name, printable

OPEN_UNTRUSTED = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class NotRegular(Exception):
    """An entry of the inbox that is not a regular file; `path` is where it is now."""

    def __init__(self, path: Path, what: str):
        self.path, self.what = path, what
        super().__init__(f"{printable(path.name)}: {what}, not a regular file")


@dataclass
class Claimed:
    path: Path  # in processing/
    size: int
    mtime_ns: int
    fd: int  # open and flocked until the file leaves processing/
    original_name: str = ""  # its name in new/ (processing/ may hold a shortened one)

    def __post_init__(self) -> None:
        self.original_name = self.original_name or self.path.name

    def read(self) -> bytes:
        # Through the locked descriptor (never by path again: the name may point elsewhere by now).
        chunks, offset = [], 0
        while offset < self.size and (block := os.pread(self.fd, min(self.size - offset, 1 << 30), offset)):
            chunks.append(block)
            offset += len(block)
        return b"".join(chunks)

    def unlock(self) -> None:
        # Once only: a closed descriptor's number is soon reused by some other open file.
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


def kind_of(mode: int) -> str:
    for test, what in ((stat_mode.S_ISLNK, "a symbolic link"), (stat_mode.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat_mode.S_ISDIR, "a directory"), (stat_mode.S_ISSOCK, "a socket"),
                       (stat_mode.S_ISCHR, "a character device"), (stat_mode.S_ISBLK, "a block device")):
        if test(mode):
            return what
    return "not a regular file" if not stat_mode.S_ISREG(mode) else "a regular file"


def ready_files(new: Path, stable_seconds: float, now: float, trusted: frozenset[str]) -> list[Path]:
    """Regular files in `new` unchanged for `stable_seconds` (or `trusted`), oldest first."""
    found = []
    with os.scandir(new) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:  # claimed by another ingester meanwhile
                continue
            if not stat_mode.S_ISREG(info.st_mode):
                continue  # stray_entries(): set aside, not claimed
            if entry.name in trusted or now - info.st_mtime >= stable_seconds:
                found.append((info.st_mtime_ns, entry.name))
    return [new / name for _, name in sorted(found)]


def stray_entries(new: Path) -> list[NotRegular]:
    """What sits in `new` that is not a regular file, judged by lstat (nothing is opened)."""
    found = []
    with os.scandir(new) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                mode = entry.stat(follow_symlinks=False).st_mode
            except FileNotFoundError:
                continue
            if not stat_mode.S_ISREG(mode):
                found.append(NotRegular(Path(entry.path), kind_of(mode)))
    return found


def claim_into_processing(path: Path, processing: Path, new: Path) -> Claimed | None:
    """Rename `path` (in `new`) into `processing`, open and lock it there; None when another
    ingester took it first or it changed since it was seen (then it goes back into `new`)."""
    try:
        before = os.lstat(path)
        target = free_name(processing, path.name)
        os.rename(path, target)
    except FileNotFoundError:
        return None
    fd = locked_regular_file(target)
    if fd is None:  # a crash-recovering ingester saw it in processing/ first: it is theirs
        return None
    after = os.fstat(fd)
    if (after.st_ino, after.st_size, after.st_mtime_ns) != (before.st_ino, before.st_size, before.st_mtime_ns):
        # Still being written through a descriptor opened before the rename (or swapped for
        # another file since the scan): put it back, it is looked at again later.
        os.rename(target, free_name(new, path.name))
        os.close(fd)
        return None
    return Claimed(target, after.st_size, after.st_mtime_ns, fd, original_name=path.name)


def crash_leftovers(processing: Path) -> tuple[list[Claimed], list[NotRegular]]:
    """The unlocked files in `processing` (their ingester is gone), now locked by us, and what
    there is not a regular file."""
    claimed, strays = [], []
    with os.scandir(processing) as entries:
        names = sorted(entry.name for entry in entries if not entry.name.startswith("."))
    for name in names:
        path = processing / name
        try:
            fd = locked_regular_file(path)
        except NotRegular as exc:
            strays.append(exc)
            continue
        if fd is not None:  # unlocked: its ingester is gone
            info = os.fstat(fd)
            claimed.append(Claimed(path, info.st_size, info.st_mtime_ns, fd))
    return claimed, strays


def locked_regular_file(path: Path) -> int | None:
    """An open descriptor of the regular file `path` holding an exclusive flock on it, or None if
    someone holds it (or it is gone). Raises NotRegular for anything else."""
    try:
        fd = os.open(path, OPEN_UNTRUSTED)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENXIO):  # a symlink; a socket
            raise
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return None
        raise NotRegular(path, kind_of(mode)) from None
    mode = os.fstat(fd).st_mode
    if not stat_mode.S_ISREG(mode):
        os.close(fd)
        raise NotRegular(path, kind_of(mode))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd
