"""Rollback, the one way `current` moves outside a cycle's promote step (and the gate's re-check).

Two callers, one code path: the running daemon (for `dreamctl rollback` over the control socket,
after abandoning any child that could move a pointer meanwhile), and dreamctl itself when the
daemon is down, holding the daemon's instance lock so that a dreamd starting meanwhile refuses to
start rather than race it (the rollback takes milliseconds). Either way the pointer moves are
recorded in the database with who asked (daemon/history.py).

No torch here: trainers.lineage only reads manifests, hashes files and replaces pointer files.
"""

from __future__ import annotations

import os
import pwd
from typing import Any

from dreamd.daemon.service.instance_lock import InstanceLock
from dreamd.daemon.service.state_dir import StateLayout


def roll_back(layout: StateLayout, target: str | None, by: str) -> dict[str, Any]:
    """Point `current` at `target` (an id or `base`; None: last_good), verified first; idempotent.
    Returns current, previous, changed, how many moves were recorded, and who did it."""
    from dreamd.daemon.gate.history import rollback_and_record

    return {**rollback_and_record(layout, target, by), "by": by}


def roll_back_offline(layout: StateLayout, target: str | None) -> dict[str, Any]:
    """The same, by dreamctl while no daemon runs: under the instance lock (AlreadyRunning if a
    daemon holds it)."""
    with InstanceLock(layout.lock_file).acquire(write_pid=False):
        return roll_back(layout, target, f"dreamctl {user_name(os.getuid())}")


def user_name(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:  # no passwd entry (containers): the uid is still worth recording
        return f"uid {uid}"
