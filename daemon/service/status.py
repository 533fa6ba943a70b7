"""What `dreamctl status` reports, read from the state dir and the database without the daemon.

The daemon answers `status` by calling `collect_status` with its live fields (phase, next runs);
dreamctl calls the same function itself when the daemon is down. Nothing here imports torch or
writes anything: the database is opened read-only, and every part is read defensively (a table
the other stages have not created yet is reported as null, not as an error), so status answers
in milliseconds even on a large database.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from dreamd.daemon.gate.evaluations import last_decision
from dreamd.daemon.serve.status_file import read_server_status
from dreamd.daemon.service.instance_lock import lock_holder
from dreamd.daemon.service.state import read_json, read_pause, service_file
from dreamd.daemon.service.state_dir import StateLayout

# Table names the memory-graph and trainer stages may use; the first one present is counted.
NODE_TABLES = ("memory_nodes", "nodes", "memories")
EDGE_TABLES = ("edges", "graph_edges")
ROUND_TABLES = ("rounds", "training_rounds")
POINTER_LIMIT = 256
SUMMARY_METRICS = ("heldout_loss", "probe_loss", "probe_accuracy", "kl_to_base", "fingerprint_to_base")


def inbox_counts(layout: StateLayout) -> dict[str, int]:
    """Files waiting in new/, being ingested in processing/, and set aside in quarantine/."""
    counts = {}
    for name in ("new", "processing", "quarantine"):
        try:
            with os.scandir(layout.inbox_folder(name)) as entries:
                counts[name] = sum(
                    1 for e in entries if not e.name.startswith(".") and not e.name.endswith(".error.json")
                )
        except OSError:
            counts[name] = 0
    return counts


def read_pointer(path: Path) -> str | None:
    """The checkpoint id a pointer file names (its first line), or None."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(POINTER_LIMIT)
    except OSError:
        return None
    text = raw.decode("utf-8", errors="replace").strip().splitlines()
    return text[0].strip() if text and text[0].strip() else None


def database_counts(path: Path) -> dict[str, Any]:
    """Row counts of the tables that exist; `database` says ok, absent or the error."""
    out: dict[str, Any] = {"database": "absent", "messages": None, "nodes": None, "edges": None,
                           "dreams_generated": None, "dreams_accepted": None, "training_rounds": None}
    if not path.exists():
        return out
    if path.stat().st_size == 0:  # created by the daemon, no stage has written a table yet
        out["database"] = "empty"
        return out
    try:
        conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=1.0)
    except sqlite3.Error as exc:
        out["database"] = f"error: {exc}"
        return out
    try:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}

        def count(candidates: tuple[str, ...], where: str = "") -> int | None:
            name = next((t for t in candidates if t in tables), None)
            if name is None:
                return None
            return conn.execute(f'SELECT count(*) FROM "{name}" {where}').fetchone()[0]

        out["messages"] = count(("messages",))
        out["nodes"] = count(NODE_TABLES)
        out["edges"] = count(EDGE_TABLES)
        out["dreams_generated"] = count(("dreams",))
        if "dreams" in tables:
            columns = {row[1] for row in conn.execute('PRAGMA table_info("dreams")')}
            if "accepted" in columns:
                out["dreams_accepted"] = count(("dreams",), "WHERE accepted")
            elif "status" in columns:
                out["dreams_accepted"] = count(("dreams",), "WHERE status = 'accepted'")
        out["training_rounds"] = count(ROUND_TABLES)
        if "evaluations" in tables:
            out.update(gate_records(conn))
        out["database"] = "ok"
    except sqlite3.Error as exc:
        out["database"] = f"error: {exc}"
    finally:
        conn.close()
    return out


def gate_records(conn: sqlite3.Connection) -> dict[str, Any]:
    """From the quality gate's `evaluations` table: rounds gated, the last decision, and the
    newest evaluation of every checkpoint (for current and last_good)."""
    rounds = conn.execute("SELECT count(*) FROM evaluations WHERE purpose = 'candidate'").fetchone()[0]
    newest = {}
    for checkpoint, metrics, decision in conn.execute(
            "SELECT checkpoint, metrics, decision FROM evaluations ORDER BY id"):
        numbers = json.loads(metrics)
        newest[checkpoint] = {"decision": decision, **{k: numbers.get(k) for k in SUMMARY_METRICS}}
    return {"training_rounds": rounds, "last_gate_decision": last_decision(conn), "evaluations": newest}


def collect_status(layout: StateLayout, live: dict[str, Any] | None = None) -> dict[str, Any]:
    """The whole status; `live` holds the running daemon's fields (None: ask nobody)."""
    saved = read_json(service_file(layout)) or {}
    pause = read_pause(layout)
    pid = live.get("pid") if live else lock_holder(layout.lock_file)
    running = bool(live) or pid is not None
    current, last_good = read_pointer(layout.current_pointer), read_pointer(layout.last_good_pointer)
    db = database_counts(layout.database)
    source = live or saved
    phase = source.get("phase") if live else ("unreachable" if running else "stopped")
    return {
        "daemon": "running" if running else "stopped",
        "pid": pid or None,
        "phase": phase,
        "paused": pause is not None,
        "pause_reason": (pause or {}).get("reason") or None,
        "inbox": inbox_counts(layout),
        "graph": {"messages": db["messages"], "nodes": db["nodes"], "edges": db["edges"]},
        "dreams": {"generated": db["dreams_generated"], "accepted": db["dreams_accepted"]},
        "training_rounds": db["training_rounds"],
        "current": current,
        "current_evaluation": db.get("evaluations", {}).get(current or "base"),
        "last_good": last_good,
        "last_good_evaluation": db.get("evaluations", {}).get(last_good or "base"),
        "last_gate_decision": db.get("last_gate_decision") or source.get("last_gate_decision"),
        "last_cycle": source.get("last_cycle"),
        "last_error": source.get("last_error"),
        "next_runs": (live or {}).get("next_runs", {}),
        "database": db["database"],
        "server": server_summary(layout),
        "state_dir": str(layout.root),
        "updated": source.get("updated") or time.time(),
    }


def server_summary(layout: StateLayout) -> dict[str, Any] | None:
    """`dreamd serve` on this state dir, from the status file it writes: where it listens, the
    checkpoint answering, requests served, conversations logged (None: it never ran here)."""
    server = read_server_status(layout.root)
    if server is None:
        return None
    keys = ("state", "pid", "address", "checkpoint", "requests_served", "requests_refused", "conversations_logged",
            "load_errors", "updated")
    return {key: server.get(key) for key in keys}


def status_line(status: dict[str, Any]) -> str:
    """The one-line STATUS= for systemd: phase, graph size, current checkpoint."""
    graph = status["graph"]
    size = "n/a" if graph["nodes"] is None and graph["messages"] is None else (
        f"{graph['nodes'] if graph['nodes'] is not None else graph['messages']} memories")
    paused = ", paused" if status["paused"] else ""
    return f"{status['phase']}{paused}; graph {size}; current {status['current'] or 'base'}"
