"""The service's own files in the state dir, and where its control socket lives.

- `<state>/service.json`: what the daemon is doing (phase, last error, last cycle, next runs),
  rewritten atomically on every change, so `dreamctl status` can say what happened last even
  when the daemon is down;
- `<state>/paused`: present while dream cycles are paused; it survives restarts on purpose (an
  operator who paused the loop does not want a crash-restart to resume training);
- `<state>/logs/dreamd.log`: the daemon's JSON log lines, rotated, for `dreamctl logs`;
- the control socket: `$RUNTIME_DIRECTORY/ctl.sock` under systemd (`/run/dreamd/ctl.sock`), else
  `<state>/ctl.sock`. Under systemd the daemon also links `<state>/ctl.sock` to it, so dreamctl
  finds the daemon from the state dir alone.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from dreamd.daemon.service.state_dir import StateLayout
from dreamd.trainers.atomic import write_atomically

SOCKET_ENV = "DREAMD_CONTROL_SOCKET"
RUNTIME_ENV = "RUNTIME_DIRECTORY"  # set by systemd's RuntimeDirectory=
SOCKET_NAME = "ctl.sock"


def runtime_dir(layout: StateLayout, environ: dict[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    value = env.get(RUNTIME_ENV)
    return Path(value.split(":")[0]) if value else layout.root


def control_socket(layout: StateLayout, environ: dict[str, str] | None = None) -> Path:
    """Where the daemon listens and dreamctl connects: $DREAMD_CONTROL_SOCKET wins, for both."""
    env = os.environ if environ is None else environ
    if env.get(SOCKET_ENV):
        return Path(env[SOCKET_ENV])
    return runtime_dir(layout, env) / SOCKET_NAME


def state_socket_link(layout: StateLayout) -> Path:
    return layout.root / SOCKET_NAME


def service_file(layout: StateLayout) -> Path:
    return layout.root / "service.json"


def pause_file(layout: StateLayout) -> Path:
    return layout.root / "paused"


def log_file(layout: StateLayout) -> Path:
    return layout.root / "logs" / "dreamd.log"


def write_json_atomic(path: Path, data: dict[str, Any], durable: bool = False) -> None:
    """Readers see the old file or the new one, never half of one. Not durable by default:
    service.json is rewritten on every change, and a power loss bringing back the one before is fine."""
    write_atomically(path, json.dumps(data, default=str) + "\n", durable=durable)


def read_json(path: Path, limit: int = 1 << 20) -> dict[str, Any] | None:
    """A small JSON object file, or None if absent, oversized or unreadable (never raises)."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(limit + 1)
        if len(raw) > limit:
            return None
        data = json.loads(raw)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_pause(layout: StateLayout) -> dict[str, Any] | None:
    """The pause record ({since, reason, by}) while paused, else None."""
    path = pause_file(layout)
    if not path.exists():
        return None
    return read_json(path) or {"since": None, "reason": "", "by": None}


def set_pause(layout: StateLayout, paused: bool, reason: str = "", by: int | None = None) -> None:
    path = pause_file(layout)
    if paused:
        write_json_atomic(path, {"since": time.time(), "reason": reason, "by": by}, durable=True)
    else:
        path.unlink(missing_ok=True)


def link_socket_into_state(layout: StateLayout, socket_path: Path) -> None:
    """Point `<state>/ctl.sock` at a socket that lives elsewhere (the runtime dir)."""
    link = state_socket_link(layout)
    if link == socket_path:
        return
    tmp = link.with_name(f".{link.name}.{os.getpid()}.link")
    tmp.unlink(missing_ok=True)
    os.symlink(socket_path, tmp)
    os.replace(tmp, link)


def tail_lines(path: Path, count: int, max_bytes: int = 4 << 20) -> list[str]:
    """The last `count` lines of a text file, reading at most `max_bytes` from its end."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            data = handle.read()
    except OSError:
        return []
    lines = data.decode("utf-8", errors="replace").splitlines()
    if size > max_bytes:
        lines = lines[1:]  # the first one is probably cut
    return lines[-count:] if count else []
