"""One dreamd per state directory: an flock(2) on `<state>/dreamd.lock`.

flock, not a pid file: the kernel drops the lock when the holder dies, however it dies (SIGKILL,
OOM, power), so a stale lock cannot exist and a restart never has to guess whether a pid is
still ours. The pid written into the file is for people and for `dreamctl status`, never trusted
for the decision. The descriptor is close-on-exec, so a child (training) cannot keep the lock
alive after the daemon is gone.

dreamctl takes the same lock for the brief moments it changes the state dir itself while the
daemon is down (e.g. pause), so the two never write at once.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path


class AlreadyRunning(RuntimeError):
    """Another process holds the lock; `pid` is what it wrote into the file (None if unreadable)."""

    def __init__(self, path: Path, pid: int | None):
        self.path = path
        self.pid = pid
        who = f"pid {pid}" if pid else "another process"
        super().__init__(f"{path} is locked by {who}: dreamd is already running on this state dir")


class InstanceLock:
    """An exclusive, non-blocking flock held from `acquire()` until `release()` or exit."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, write_pid: bool = True) -> InstanceLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise AlreadyRunning(self.path, read_pid(self.path)) from None
            raise
        if write_pid:
            # Truncate after locking: the old content may be a previous holder's pid.
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        # The pid line is left: harmless, and unlinking would race a new holder's open().
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def __enter__(self) -> InstanceLock:
        return self if self.held else self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()


def read_pid(path: Path) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def lock_holder(path: Path) -> int | None:
    """The pid of the running dreamd holding `path`, or None when nobody holds it.

    Probes with a shared non-blocking flock, which never disturbs a holder and cannot be left
    behind (it is released at once, and by the kernel if we die first). Returns 0 when the lock
    is held but the pid in the file is unreadable.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except PermissionError:
        return read_pid(path)  # cannot probe: trust the file, the best we have
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return read_pid(path) or 0
        raise
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
