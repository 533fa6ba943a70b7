"""Where dreamd keeps everything it writes, and the layout inside (see state/README.md)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

STATE_ENV = "DREAMD_STATE_DIR"
SYSTEMD_STATE_ENV = "STATE_DIRECTORY"  # set by systemd's StateDirectory=
INBOX_FOLDERS = ("tmp", "new", "processing", "done", "quarantine")


def resolve_state_dir(explicit: str | Path | None = None) -> Path:
    """--state-dir, else $DREAMD_STATE_DIR, else systemd's $STATE_DIRECTORY, else ./state."""
    for candidate in (explicit, os.environ.get(STATE_ENV), _first_systemd_dir()):
        if candidate:
            return Path(candidate).absolute()
    return Path("state").absolute()


def _first_systemd_dir() -> str | None:
    # systemd passes a colon-separated list when several StateDirectory= are set.
    value = os.environ.get(SYSTEMD_STATE_ENV)
    return value.split(":")[0] if value else None


@dataclass(frozen=True)
class StateLayout:
    root: Path

    @property
    def database(self) -> Path:
        return self.root / "dreamd.db"

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    def inbox_folder(self, name: str) -> Path:
        """One of the inbox's maildir folders: tmp, new, processing, done, quarantine."""
        assert name in INBOX_FOLDERS, name
        return self.inbox / name

    @property
    def current_pointer(self) -> Path:
        return self.root / "current"

    @property
    def last_good_pointer(self) -> Path:
        return self.root / "last_good"

    @property
    def lock_file(self) -> Path:
        return self.root / "dreamd.lock"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    def ensure(self) -> StateLayout:
        """Create the folders that must exist before anything is written (mode 0750)."""
        inbox = [self.inbox_folder(name) for name in INBOX_FOLDERS]
        for folder in (self.root, self.models, self.checkpoints, self.reports, *inbox):
            folder.mkdir(mode=0o750, parents=True, exist_ok=True)
        return self
