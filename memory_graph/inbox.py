"""The inbox folders and every move between them (maildir semantics).

    writer:   tmp/<x>  --rename-->  new/<name>
    ingester: new/<name> --rename--> processing/<name> --(commit)--> done/<name>
                                                       \\-------------> quarantine/<name> + <name>.error.json

A rename within one file system is atomic, so a file is always in exactly one folder and two
ingesters cannot both claim it: the loser's rename fails. Names starting with "." and everything
in tmp/ are never read. Moves out of processing/ need no directory fsync: if one is lost in a
crash the file reappears in processing/, is run again, and its sha256 is already in the database.

The Inbox composes two modules: inbox_claim (taking untrusted entries out of new/ and processing/:
O_NOFOLLOW, fstat, flock, reads through the descriptor) and inbox_placement (safe names, moves
that never overwrite, quarantine reports, durable writes). Their names used elsewhere are
re-exported here, so `from dreamd.memory_graph.inbox import ...` is the one import to know.
"""

from __future__ import annotations

import os
import secrets
import stat as stat_mode
import time
from pathlib import Path

from dreamd.memory_graph.inbox_claim import (
    Claimed,
    NotRegular,
    claim_into_processing,
    crash_leftovers,
    kind_of,
    ready_files,
    stray_entries,
)
from dreamd.memory_graph.inbox_placement import (
    copy_into,
    free_name,
    fsync,
    is_no_space,
    move_no_replace,
    move_to_quarantine,
    printable,
    prune_older,
    rename_no_follow,
    safe_name,
)
from dreamd.memory_graph.settings import InboxSettings

__all__ = ["FOLDERS", "Claimed", "DropError", "Inbox", "NotRegular", "is_no_space", "kind_of", "printable",
           "safe_name"]

FOLDERS = ("tmp", "new", "processing", "done", "quarantine")


class DropError(Exception):
    """`Inbox.drop` could not put a file into the inbox; nothing was left behind in tmp/."""


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
        """Put a copy of `source` into new/ the safe way: copy into tmp/, fsync, rename. Raises
        DropError (and leaves nothing in tmp/) for a source that is not a regular file, a full
        disk, or any other failure to write."""
        try:
            fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO must not hang us
        except OSError as exc:
            raise DropError(f"{source}: cannot open: {exc.strerror}") from None
        name = safe_name(source.name)
        staged = self.tmp / f".{name}.{os.getpid()}.{secrets.token_hex(4)}"
        try:
            info = os.fstat(fd)
            if not stat_mode.S_ISREG(info.st_mode):
                raise DropError(f"{source}: {kind_of(info.st_mode)}, not a regular file")
            copy_into(fd, staged)
            # Keep the source's mtime, so an old log is stable at once; a fresh one waits.
            os.utime(staged, ns=(info.st_atime_ns, info.st_mtime_ns))
            target = free_name(self.new, name)
            os.rename(staged, target)
            fsync(self.new)
            return target
        except OSError as exc:
            staged.unlink(missing_ok=True)
            where = "no space left on the device" if is_no_space(exc) else exc.strerror or str(exc)
            raise DropError(f"{source}: cannot copy into {self.tmp}: {where}") from None
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)

    # -- the ingester ----------------------------------------------------------------------
    def ready(self, now: float | None = None, trusted: frozenset[str] = frozenset()) -> list[Path]:
        """Regular files in new/ that may be claimed, oldest first: not dotfiles, and unchanged
        for stable_seconds (a writer that appends straight into new/ keeps its mtime fresh).
        `trusted` names were renamed in complete by this process and need no wait."""
        now = time.time() if now is None else now
        return ready_files(self.new, self.settings.stable_seconds, now, trusted)

    def strays(self) -> list[NotRegular]:
        """What sits in new/ that is not a regular file (FIFO, symlink, directory...)."""
        return stray_entries(self.new)

    def claim(self, path: Path) -> Claimed | None:
        """Rename new/<name> into processing/; None if another ingester took it first (or it is
        still being written). Raises NotRegular (the entry then in processing/) for anything that
        is not a regular file by the time it is opened."""
        return claim_into_processing(path, self.processing, self.new)

    def leftovers(self) -> tuple[list[Claimed], list[NotRegular]]:
        """What a crashed ingester left in processing/ (to be run again), and what there is not a
        regular file (to be set aside)."""
        return crash_leftovers(self.processing)

    def finish(self, claimed: Claimed) -> Path | None:
        """processing/ -> done/, after the database commit."""
        return self._leave(claimed, lambda path: move_no_replace(path, self.done))

    def quarantine(self, claimed: Claimed, reason: str, where: str | None = None, **details) -> Path | None:
        """processing/ -> quarantine/, with <name>.error.json beside it (written first, atomically)."""
        details.setdefault("original_name", printable(claimed.original_name))
        return self._leave(claimed, lambda path: move_to_quarantine(path, self.quarantined, reason, where, **details))

    def set_aside(self, stray: NotRegular) -> Path | None:
        """Move an entry that is not a regular file to quarantine/ (by rename: nothing is opened
        or followed), with its report; if it cannot be moved, remove it. None if it is gone."""
        reason = f"{stray.what}, not a regular file: nothing was read from it"
        try:
            return move_to_quarantine(stray.path, self.quarantined, reason, None, move=rename_no_follow,
                                      original_name=printable(stray.path.name))
        except FileNotFoundError:
            return None
        except OSError:
            if stray.path.is_dir() and not stray.path.is_symlink():
                os.rmdir(stray.path)  # only an empty one; a full directory raises and is reported
            else:
                os.unlink(stray.path)
            return None

    def prune_done(self, older_than_seconds: float, now: float | None = None) -> int:
        """Delete files that moved into done/ more than `older_than_seconds` ago; returns how many.
        A file's ctime is when it was linked into done/ (its mtime is the log's own age)."""
        return prune_older(self.done, older_than_seconds, now)

    def _leave(self, claimed: Claimed, move) -> Path | None:
        try:
            return move(claimed.path)
        except FileNotFoundError:
            return None  # moved already: a recovering ingester raced this one and both saw it through
        finally:
            claimed.unlock()
