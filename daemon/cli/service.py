"""dreamctl's service commands: status, pause, resume, dream --now, reload, logs.

They talk to the running daemon over its control socket. When it is down, the read-only ones
(status, logs) read the state dir and the database themselves, and pause/resume write the pause
flag themselves under the daemon's instance lock (so a daemon starting meanwhile cannot miss it).

This module is imported by `dreamctl` at start: it must import nothing heavy (no torch, no
jsonschema, no APScheduler), or `dreamctl status` would lose its < 0.5 s.

Exit codes: 0 success; 1 failure (including a refused request, e.g. dream --now while paused);
2 invalid usage or configuration; 3 dreamd is not running (for commands that need it);
4 permission denied (not root, the daemon's user nor in `daemon.control_group`).
"""

from __future__ import annotations

import json
from typing import Any

import click

from dreamd.daemon.cli.common import echo_json, json_option, json_text
from dreamd.daemon.service.control import ControlError, DaemonUnavailable, request
from dreamd.daemon.service.instance_lock import AlreadyRunning, InstanceLock
from dreamd.daemon.service.state import control_socket, log_file, read_pause, set_pause, tail_lines
from dreamd.daemon.service.state_dir import StateLayout

EXIT_NOT_RUNNING = 3
EXIT_DENIED = 4
LEVELS = ("debug", "info", "warning", "error", "critical")


class CommandFailed(click.ClickException):
    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def _layout(obj) -> StateLayout:
    return obj.layout()


def ask_daemon(layout: StateLayout, cmd: str, args: dict[str, Any] | None = None,
               timeout: float = 5.0) -> dict[str, Any]:
    """A command for the daemon; ControlError becomes the right exit code."""
    try:
        return request(control_socket(layout), cmd, args, timeout=timeout)
    except ControlError as exc:
        raise CommandFailed(f"dreamd refused: {exc.message}", EXIT_DENIED if exc.code == "denied" else 1) from None


def table_lines(rows: list[tuple[str, Any]]) -> list[str]:
    """`key  value` lines, keys padded to one width, `-` for a missing value."""
    width = max((len(k) for k, _ in rows), default=0)
    return [f"{key.ljust(width)}  {'-' if value is None else value}" for key, value in rows]


def _table(rows: list[tuple[str, Any]]) -> None:
    for line in table_lines(rows):
        click.echo(line)


def _emit(data: dict[str, Any], as_json: bool, rows: list[tuple[str, Any]] | None = None) -> None:
    if as_json:
        echo_json(data)
    else:
        _table(rows if rows is not None else list(data.items()))


@click.command()
@json_option
@click.pass_obj
def status(obj, as_json: bool):
    """What dreamd is doing: phase, pause, inbox, graph, dreams, rounds, checkpoints, errors, next runs.

    Asks the running daemon; when it is down, reads the state dir and the database directly
    (`daemon` then says stopped).
    """
    from dreamd.daemon.service.status import collect_status

    layout = _layout(obj)
    try:
        data = {**request(control_socket(layout), "status", timeout=2.0), "source": "daemon"}
    except (DaemonUnavailable, ControlError, TimeoutError, OSError) as exc:
        data = {**collect_status(layout), "source": "state dir",
                **({"unreachable": str(exc)} if not isinstance(exc, DaemonUnavailable) else {})}
    _emit(data, as_json, _status_rows(data))


def _status_rows(d: dict[str, Any]) -> list[tuple[str, Any]]:
    inbox, graph, dreams = d["inbox"], d["graph"], d["dreams"]
    cycle = d.get("last_cycle") or {}
    error = d.get("last_error") or {}
    rows = [
        ("daemon", f"{d['daemon']}" + (f" (pid {d['pid']})" if d.get("pid") else "")),
        ("phase", d["phase"]),
        ("paused", "yes" + (f" ({d['pause_reason']})" if d.get("pause_reason") else "") if d["paused"] else "no"),
        ("inbox", f"new {inbox['new']}, processing {inbox['processing']}, quarantine {inbox['quarantine']}"),
        ("graph", f"messages {_n(graph['messages'])}, nodes {_n(graph['nodes'])}, edges {_n(graph['edges'])}"),
        ("dreams", f"generated {_n(dreams['generated'])}, accepted {_n(dreams['accepted'])}"),
        ("training rounds", d["training_rounds"]),
        ("current", d["current"] or "base model"),
        ("  evaluation", _evaluation(d.get("current_evaluation"))),
        ("last_good", d["last_good"]),
        ("last gate decision", _decision(d.get("last_gate_decision"))),
        ("last cycle", f"{cycle.get('status')}: {(cycle.get('result') or {}).get('outcome') or cycle.get('error')}"
         if cycle else None),
        ("last error", f"{error.get('where')}: {error.get('error')}" if error else None),
        ("database", d["database"]),
        ("server", _server(d.get("server"))),
    ]
    rows += [(f"stage {name}", f"{'STALLED, ' if st.get('stalled') else ''}{st.get('detail')}; "
              f"last progress {st.get('idle_s')} s ago") for name, st in sorted((d.get("stages") or {}).items())]
    rows += [(f"next {job}", when) for job, when in sorted((d.get("next_runs") or {}).items())]
    rows.append(("state dir", d["state_dir"]))
    return rows


def _server(server: dict[str, Any] | None) -> str | None:
    """`dreamd serve`: running or not, where, which checkpoint, how much it has done."""
    if not server:
        return None
    if server.get("state") != "serving":
        return f"stopped (last at {server.get('address')})"
    return (f"serving {server.get('checkpoint')} at {server.get('address')}, requests {server.get('requests_served')}, "
            f"conversations logged {_n(server.get('conversations_logged'))}")


def _evaluation(summary: dict[str, Any] | None) -> str | None:
    """The current model's newest evaluation, in a line: what the gate saw."""
    if not summary:
        return None
    names = {"heldout_loss": "held-out loss", "probe_loss": "probe loss", "probe_accuracy": "probe accuracy",
             "kl_to_base": "KL to base", "fingerprint_to_base": "fingerprint"}
    parts = [f"{label} {summary[key]:.3g}" for key, label in names.items() if isinstance(summary.get(key), float)]
    return ", ".join(parts) or None


def _decision(decision: Any) -> Any:
    if not isinstance(decision, dict) or "decision" not in decision:
        return _short(decision)
    reasons = "; ".join(decision.get("reasons") or [])
    return f"{decision['decision']} {decision.get('checkpoint')}" + (f" ({_short(reasons)})" if reasons else "")


def _n(value: int | None) -> str:
    return "-" if value is None else str(value)


def _short(value: Any, limit: int = 80) -> Any:
    if value is None or isinstance(value, str) and len(value) <= limit:
        return value
    text = json_text(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _set_pause(obj, paused: bool, reason: str, as_json: bool) -> None:
    layout = _layout(obj)
    cmd = "pause" if paused else "resume"
    try:
        result = {**ask_daemon(layout, cmd, {"reason": reason} if reason else None), "via": "daemon"}
    except DaemonUnavailable:
        if not layout.root.is_dir():
            raise CommandFailed(f"no state dir at {layout.root}") from None
        try:
            with InstanceLock(layout.lock_file).acquire(write_pid=False):
                set_pause(layout, paused, reason=reason)
        except AlreadyRunning as exc:
            raise CommandFailed(f"dreamd runs (pid {exc.pid}) but its control socket does not answer") from None
        except PermissionError as exc:
            raise CommandFailed(f"cannot change the state dir: {exc}", EXIT_DENIED) from None
        result = {"paused": read_pause(layout) is not None, "via": "state dir (dreamd is not running)"}
    _emit(result, as_json)


@click.command()
@click.option("--reason", default="", help="Why, for status and the log (at most 200 characters).")
@json_option
@click.pass_obj
def pause(obj, reason: str, as_json: bool):
    """Pause dream cycles and re-evaluation (a running cycle finishes); the inbox is still ingested.

    The pause survives restarts until `dreamctl resume`. Works with the daemon down too.
    """
    _set_pause(obj, True, reason[:200], as_json)


@click.command()
@json_option
@click.pass_obj
def resume(obj, as_json: bool):
    """Resume dream cycles and re-evaluation after `dreamctl pause`."""
    _set_pause(obj, False, "", as_json)


@click.command()
@click.option("--now", "now", is_flag=True, required=True, help="Start a dream cycle now (required).")
@json_option
@click.pass_obj
def dream(obj, now: bool, as_json: bool):
    """Ask the running daemon to start a dream cycle now (exit 3 if it is not running)."""
    try:
        result = ask_daemon(_layout(obj), "dream_now")
    except DaemonUnavailable as exc:
        raise CommandFailed(str(exc), EXIT_NOT_RUNNING) from None
    _emit(result, as_json)


@click.command()
@json_option
@click.pass_obj
def reload(obj, as_json: bool):
    """Make the running daemon re-read its config file (as SIGHUP / systemctl reload does)."""
    try:
        result = ask_daemon(_layout(obj), "reload")
    except DaemonUnavailable as exc:
        raise CommandFailed(str(exc), EXIT_NOT_RUNNING) from None
    _emit(result, as_json)


@click.command()
@click.option("-n", "--lines", "count", default=50, show_default=True, type=click.IntRange(1, 10000),
              help="How many of the most recent lines.")
@click.option("--level", type=click.Choice(LEVELS), default=None, help="Only lines at this level or above.")
@json_option
@click.pass_obj
def logs(obj, count: int, level: str | None, as_json: bool):
    """The daemon's recent log lines, from <state>/logs/dreamd.log (works with the daemon down)."""
    path = log_file(_layout(obj))
    floor = LEVELS.index(level) if level else 0
    entries = []
    for line in tail_lines(path, count * 20 if level else count):
        try:
            entry = json.loads(line)
        except ValueError:
            entry = {"event": line}
        if not isinstance(entry, dict):
            entry = {"event": str(entry)}
        rank = LEVELS.index(entry["level"]) if entry.get("level") in LEVELS else LEVELS.index("info")
        if rank >= floor:
            entries.append(entry)
    entries = entries[-count:]
    if as_json:
        echo_json({"file": str(path), "lines": entries})
        return
    if not entries:
        click.echo(f"no log lines in {path}", err=True)
    for e in entries:
        extra = " ".join(f"{k}={v}" for k, v in e.items() if k not in ("timestamp", "level", "event"))
        when, level = str(e.get("timestamp", ""))[:23], str(e.get("level", ""))
        click.echo(f"{when:23}  {level:7}  {e.get('event', '')}  {extra}".rstrip())
