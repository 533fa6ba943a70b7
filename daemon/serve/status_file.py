"""The server's own status file, `<state>/serve/status.json`: what `dreamctl status` shows of it.

The server rewrites it atomically (a reader sees the old file or the new one) when it starts, when
another checkpoint answers, at most once a second while requests come in, and when it stops.
Reading it needs no server and no torch; a server that died without saying so is recognised by
its pid being gone.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from dreamd.trainers.atomic import write_atomically


def status_path(state_root: Path) -> Path:
    return state_root / "serve" / "status.json"


def write_status(state_root: Path, status: dict[str, Any]) -> None:
    path = status_path(state_root)
    path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    write_atomically(path, json.dumps(status, indent=1, sort_keys=True) + "\n", durable=False)


def read_server_status(state_root: Path) -> dict[str, Any] | None:
    """The last status the server wrote, with `state` corrected to `stopped` when its process is
    gone; None when no server ever ran on this state dir."""
    try:
        status = json.loads(status_path(state_root).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(status, dict):
        return None
    if status.get("state") == "serving" and not _alive(status.get("pid")):
        status["state"] = "stopped"
    return status


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process (the dreamd user under systemd): alive
        return True
    return True
