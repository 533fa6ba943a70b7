"""`dreamctl report`: PNG charts and one HTML page of how the loop has gone, from the database.

What it draws: the quality gate's evaluations over time (one chart per metric), training loss
per step and per round, dreams accepted and rejected per cycle with the reject reasons, growth of
the memory graph, and a timeline of promotions, rejections and rollbacks (marked as vertical
lines on the time charts too).

It only reads: the database is opened read-only and read in one transaction, so the numbers are
one consistent snapshot even while the daemon writes (WAL lets a reader and a writer work side by
side). A database older than a table (no `training_rounds` yet, say) gives a page that says so for
that part. matplotlib is imported here, so import this module lazily.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dreamd.daemon.report import plotting
from dreamd.daemon.report.plotting import html_table, paragraph
from dreamd.daemon.service.state_dir import StateLayout

# Metrics charted first, with their names for people; any other number in the metrics JSON is
# charted after them under its own key (nested ones, such as slice_losses, are not).
METRIC_NAMES = {
    "heldout_loss": "held-out loss",
    "probe_loss": "probe loss",
    "probe_accuracy": "probe accuracy",
    "kl_to_base": "KL to base (nats)",
    "fingerprint_to_base": "fingerprint similarity to base",
    "fingerprint_to_previous": "fingerprint similarity to current",
    "acquisition_loss": "acquisition loss",
}
MAX_LABELLED_EVENTS = 20  # beyond this the labels on the charts overlap: the table has them
MAX_TABLE_ROWS = 200


class NoDatabase(RuntimeError):
    """There is no database yet: nothing was ingested and no cycle ran."""


# --- reading ---------------------------------------------------------------------------------

def read_history(path: Path) -> dict[str, Any]:
    """Everything the report shows, as plain lists, from one read-only snapshot of the database."""
    if not path.exists():
        raise NoDatabase(f"no database at {path}: nothing has been ingested yet")
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10.0, isolation_level=None)
    try:
        conn.execute("BEGIN")  # one snapshot for every query below
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        data = {
            "tables": sorted(tables),
            "history_since": _history_since(conn, tables),
            "evaluations": _evaluations(conn) if "evaluations" in tables else [],
            "rounds": _rounds(conn) if "training_rounds" in tables else [],
            "moves": _moves(conn) if "pointer_moves" in tables else [],
            "batches": _batches(conn) if "dreams" in tables else [],
            "rejections": _rejection_reasons(conn) if "dreams" in tables else [],
            "growth": _growth(conn) if {"sources", "messages", "memory_nodes"} <= tables else [],
        }
        conn.execute("COMMIT")
        return data
    finally:
        conn.close()


def _history_since(conn, tables) -> float | None:
    # When rounds and pointer moves began to be recorded: before that, rollbacks are known only
    # from the re-check's evaluations.
    if "_migrations" not in tables:
        return None
    row = conn.execute("SELECT applied_at FROM _migrations WHERE name = 'm005_history'").fetchone()
    return row[0] if row else None


def _evaluations(conn) -> list[dict]:
    rows = conn.execute("SELECT id, checkpoint, purpose, evaluated_at, metrics, decision, reasons, compared_to "
                        "FROM evaluations ORDER BY evaluated_at, id").fetchall()
    return [{"id": r[0], "checkpoint": r[1], "purpose": r[2], "at": r[3], "metrics": _json(r[4], {}),
             "decision": r[5], "reasons": _json(r[6], []), "compared_to": r[7]} for r in rows]


def _rounds(conn) -> list[dict]:
    rows = conn.execute("SELECT checkpoint, parent, mode, started_at, finished_at, examples, dream_examples, "
                        "steps, losses FROM training_rounds ORDER BY finished_at, id").fetchall()
    keys = ("checkpoint", "parent", "mode", "started_at", "finished_at", "examples", "dream_examples", "steps")
    return [{**dict(zip(keys, r[:8])), "losses": _json(r[8], [])} for r in rows]


def _moves(conn) -> list[dict]:
    rows = conn.execute("SELECT at, pointer, from_checkpoint, to_checkpoint, why, by FROM pointer_moves "
                        "ORDER BY at, id").fetchall()
    return [dict(zip(("at", "pointer", "from", "to", "why", "by"), r)) for r in rows]


def _batches(conn) -> list[dict]:
    rows = conn.execute("SELECT batch, min(created_at), sum(accepted), count(*) FROM dreams "
                        "GROUP BY batch ORDER BY min(created_at), batch").fetchall()
    return [{"batch": r[0], "at": r[1], "accepted": r[2], "rejected": r[3] - r[2]} for r in rows]


def _rejection_reasons(conn) -> list[dict]:
    """Reject reasons grouped by kind (the scorer, or the failure), with how many rejected dreams
    gave each and one full example."""
    counts: dict[str, list] = {}
    for (reasons,) in conn.execute("SELECT reasons FROM dreams WHERE accepted = 0"):
        reasons = _json(reasons, []) or ["(no reason recorded)"]
        for kind, example in {reason_kind(r): r for r in reversed(reasons)}.items():
            entry = counts.setdefault(kind, [0, example])
            entry[0] += 1
    ranked = sorted(counts.items(), key=lambda item: (-item[1][0], item[0]))
    return [{"reason": kind, "dreams": n, "example": example} for kind, (n, example) in ranked]


def reason_kind(reason: str) -> str:
    """A reject reason without its numbers: "judge: rated 3 < 5" -> "judge", so that reasons of
    one kind are counted together."""
    reason = str(reason)
    named = re.match(r"([a-z_]+): ", reason)
    if named:
        return named.group(1)
    if reason.startswith("total "):
        return "total below min_total"
    return reason.split(" (")[0][:60]


def _growth(conn) -> list[dict]:
    # A memory belongs to the source of its first message: a conversation downloaded again with
    # more in it adds its new memories to the later source.
    nodes = dict(conn.execute("SELECT m.source_id, count(*) FROM memory_nodes n "
                              "JOIN messages m ON m.id = n.first_message_id GROUP BY m.source_id").fetchall())
    messages = dict(conn.execute("SELECT source_id, count(*) FROM messages GROUP BY source_id").fetchall())
    rows = conn.execute("SELECT id, name, ingested_at FROM sources ORDER BY ingested_at, id").fetchall()
    return [{"source": name, "at": at, "messages": messages.get(sid, 0), "nodes": nodes.get(sid, 0)}
            for sid, name, at in rows]


def _json(text, default):
    try:
        return json.loads(text) if text else default
    except (TypeError, ValueError):
        return default


# --- what happened when ----------------------------------------------------------------------

def timeline(data: dict) -> list[dict]:
    """Promotions and rejections (the gate's evaluations) and rollbacks (pointer moves of
    `current`, or, before those were recorded, the re-check's evaluations), oldest first."""
    events, since = [], data["history_since"]
    for e in data["evaluations"]:
        if e["purpose"] == "candidate" and e["decision"] in ("promoted", "rejected"):
            events.append({"at": e["at"], "kind": e["decision"], "checkpoint": e["checkpoint"],
                           "detail": "; ".join(e["reasons"]) or f"against {e['compared_to']}"})
        if e["decision"] == "rolled_back" and (since is None or e["at"] < since):
            events.append({"at": e["at"], "kind": "rolled_back", "checkpoint": e["checkpoint"],
                           "detail": "; ".join(e["reasons"])})
    for m in data["moves"]:
        if m["pointer"] == "current" and m["why"] != "promoted":
            kind = "rolled_back" if m["why"] == "rolled_back" else "manual_rollback"
            events.append({"at": m["at"], "kind": kind, "checkpoint": m["from"],
                           "detail": f"{m['why']} by {m['by']}: {m['from']} -> {m['to']}"})
    return sorted(events, key=lambda e: e["at"])


def _when(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


def _stamp(ts: float | None) -> str:
    return "" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def _chart_events(events: list[dict]) -> list[tuple]:
    labelled = len(events) <= MAX_LABELLED_EVENTS
    return [(_when(e["at"]), _short(e["checkpoint"]) if labelled else "", e["kind"]) for e in events]


def _short(checkpoint: str) -> str:
    # Ids are "<UTC stamp>-<6 hex>": the chart's axis gives the time, the hex tells them apart.
    return checkpoint.rsplit("-", 1)[-1]


# --- drawing ---------------------------------------------------------------------------------

def build_report(layout: StateLayout, out_dir: Path | str | None = None) -> dict:
    """Read the database, draw the charts into `out_dir` (default `<state>/reports`) and write
    `index.html` there linking them. Returns the page, the images and the counts."""
    data = read_history(layout.database)  # first: no database, no folder made
    out = Path(out_dir) if out_dir else layout.reports
    out.mkdir(parents=True, exist_ok=True)
    events = timeline(data)
    sections = [_summary(layout, data, events)]
    for part in (_evaluation_sections, _training_sections, _dream_sections, _growth_sections, _timeline_sections):
        sections += part(data, events, out)
    page = plotting.write_html(out / "index.html", "dreamd report", sections)
    images = [s["image"] for s in sections if s.get("image")]
    return {"page": str(page), "out_dir": str(out), "images": images, "counts": counts(data, events)}


def counts(data: dict, events: list[dict]) -> dict[str, int]:
    kinds = [e["kind"] for e in events]
    return {
        "evaluations": len(data["evaluations"]),
        "training_rounds": len(data["rounds"]),
        "pointer_moves": len(data["moves"]),
        "dream_batches": len(data["batches"]),
        "dreams_accepted": sum(b["accepted"] for b in data["batches"]),
        "dreams_rejected": sum(b["rejected"] for b in data["batches"]),
        "sources": len(data["growth"]),
        "messages": sum(g["messages"] for g in data["growth"]),
        "memory_nodes": sum(g["nodes"] for g in data["growth"]),
        "promotions": kinds.count("promoted"),
        "rejections": kinds.count("rejected"),
        "rollbacks": kinds.count("rolled_back") + kinds.count("manual_rollback"),
    }


def _summary(layout: StateLayout, data: dict, events: list[dict]) -> dict:
    from dreamd.trainers.checkpoints.pointers import POINTERS, read_pointer

    numbers = counts(data, events)
    rows = [(name.replace("_", " "), value) for name, value in numbers.items()]
    rows += [(name, read_pointer(layout, name)) for name in POINTERS]
    text = f"From {layout.database}, read {_stamp(time.time())} UTC."
    if not any(numbers.values()):
        text += " Nothing yet: no logs ingested, no dreams, no training rounds. Run a cycle and come back."
    return {"heading": "Summary", "image": None, "html": paragraph(text) + html_table(("what", "value"), rows)}


def _nothing(heading: str, why: str) -> list[dict]:
    return [{"heading": heading, "image": None, "html": paragraph(why)}]


def _evaluation_sections(data: dict, events: list[dict], out: Path) -> list[dict]:
    evaluations = data["evaluations"]
    if not evaluations:
        return _nothing("Evaluations", "Nothing yet: the quality gate has not evaluated a checkpoint.")
    sections = []
    for metric in _metrics(evaluations):
        series = {}
        for purpose in ("candidate", "recheck", "reference", "base"):
            rows = [e for e in evaluations if e["purpose"] == purpose and _number(e["metrics"].get(metric))]
            if rows:
                series[purpose] = ([_when(e["at"]) for e in rows], [e["metrics"][metric] for e in rows])
        name = f"eval_{metric}.png"
        title = METRIC_NAMES.get(metric, metric)
        plotting.line_chart(out / name, f"{title} per evaluation", "time (UTC)", title, series,
                            _chart_events(events))
        sections.append({"heading": f"Evaluations: {title}", "image": name, "html": ""})
    shown = evaluations[-MAX_TABLE_ROWS:]
    rows = [(_stamp(e["at"]), e["checkpoint"], e["purpose"], e["decision"],
             *(e["metrics"].get(m) if _number(e["metrics"].get(m)) else None for m in METRIC_NAMES),
             "; ".join(e["reasons"])) for e in reversed(shown)]
    header = ("time (UTC)", "checkpoint", "purpose", "decision", *METRIC_NAMES, "reasons")
    note = paragraph(f"Every evaluation, newest first ({len(shown)} of {len(evaluations)}). The suite grows with "
                     "the memory graph, so numbers from far apart in time were measured on different suites; "
                     "each decision compares models on the same one.")
    sections.append({"heading": "Evaluations: table", "image": None, "html": note + html_table(header, rows)})
    return sections


def _metrics(evaluations: list[dict]) -> list[str]:
    present = {k for e in evaluations for k, v in e["metrics"].items() if _number(v)}
    return [m for m in METRIC_NAMES if m in present] + sorted(present - set(METRIC_NAMES))


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _training_sections(data: dict, events: list[dict], out: Path) -> list[dict]:
    rounds = data["rounds"]
    if not rounds:
        return _nothing("Training", "Nothing yet: no training round recorded (rounds are recorded from "
                                    "this version of dreamd on; older ones are only in their checkpoint manifests).")
    decisions = {e["checkpoint"]: e["decision"] for e in data["evaluations"] if e["purpose"] == "candidate"}
    labelled = len(rounds) <= MAX_LABELLED_EVENTS
    xs, ys, ends, offset = [], [], [], 0
    for r in rounds:  # steps of all rounds one after another, a line where each round ends
        xs += range(offset + 1, offset + len(r["losses"]) + 1)
        ys += r["losses"]
        offset += len(r["losses"])
        ends.append((offset, _short(r["checkpoint"]) if labelled else "", decisions.get(r["checkpoint"], "not gated")))
    plotting.line_chart(out / "training_steps.png", "training loss per step (rounds one after another)",
                        "step", "loss", {"loss per step": (xs, ys)}, ends)
    firsts = [_first_finite(r["losses"]) for r in rounds]
    lasts = [_first_finite(list(reversed(r["losses"]))) for r in rounds]
    when = [_when(r["finished_at"]) for r in rounds]
    plotting.line_chart(out / "training_rounds.png", "training loss per round", "time (UTC)", "loss",
                        {"first step": (when, firsts), "last step": (when, lasts)}, _chart_events(events))
    rows = [(r["checkpoint"], r["parent"], r["mode"], _stamp(r["started_at"]),
             round(r["finished_at"] - r["started_at"], 1), r["examples"], r["dream_examples"], r["steps"],
             first, last, decisions.get(r["checkpoint"], "not gated"))
            for r, first, last in reversed(list(zip(rounds, firsts, lasts)))][:MAX_TABLE_ROWS]
    header = ("checkpoint", "parent", "mode", "started (UTC)", "seconds", "examples", "dream examples", "steps",
              "first loss", "last loss", "gate")
    return [
        {"heading": "Training: loss per step", "image": "training_steps.png",
         "html": paragraph("Vertical lines mark the end of each round, coloured by the gate's decision on it.")},
        {"heading": "Training: loss per round", "image": "training_rounds.png",
         "html": paragraph(f"Every round, newest first ({len(rows)} of {len(rounds)}).") + html_table(header, rows)},
    ]


def _first_finite(losses: list) -> float | None:
    return next((x for x in losses if x is not None), None)


def _dream_sections(data: dict, events: list[dict], out: Path) -> list[dict]:
    batches = data["batches"]
    if not batches:
        return _nothing("Dreams", "Nothing yet: no dream cycle has run.")
    labels = [f"{_stamp(b['at'])[5:16]} {b['batch'][:6]}" for b in batches]
    plotting.bar_chart(out / "dreams.png", "dreams per cycle", "cycle (UTC time, batch id)", "dreams", labels,
                       {"accepted": [b["accepted"] for b in batches], "rejected": [b["rejected"] for b in batches]},
                       colours={"accepted": "tab:green", "rejected": "tab:red"})
    reasons = data["rejections"]
    table = (html_table(("reason", "rejected dreams", "example"), [(r["reason"], r["dreams"], r["example"])
                                                                   for r in reasons])
             if reasons else paragraph("No dream was rejected."))
    note = paragraph("Why the signal agent rejected dreams; a dream rejected for several reasons counts once in each.")
    return [{"heading": "Dreams: accepted and rejected per cycle", "image": "dreams.png", "html": ""},
            {"heading": "Dreams: reject reasons", "image": None, "html": note + table}]


def _growth_sections(data: dict, events: list[dict], out: Path) -> list[dict]:
    growth = data["growth"]
    if not growth:
        return _nothing("Memory graph", "Nothing yet: no conversation log has been ingested.")
    when = [_when(g["at"]) for g in growth]
    plotting.line_chart(out / "graph_growth.png", "memory graph growth", "ingested at (UTC)", "total",
                        {"messages": (when, _cumulative(g["messages"] for g in growth)),
                         "memory nodes": (when, _cumulative(g["nodes"] for g in growth))})
    return [{"heading": "Memory graph: growth", "image": "graph_growth.png",
             "html": paragraph(f"{len(growth)} sources ingested; totals after each.")}]


def _cumulative(values) -> list[int]:
    total, out = 0, []
    for value in values:
        total += value
        out.append(total)
    return out


def _timeline_sections(data: dict, events: list[dict], out: Path) -> list[dict]:
    if not events:
        return _nothing("Timeline", "Nothing yet: no promotion, rejection or rollback.")
    when = [_when(e["at"]) for e in events]
    series = {name: (when, _cumulative(int(e["kind"] in kinds) for e in events))
              for name, kinds in (("promotions", ("promoted",)), ("rejections", ("rejected",)),
                                  ("rollbacks", ("rolled_back", "manual_rollback")))}
    plotting.line_chart(out / "timeline.png", "promotions, rejections and rollbacks", "time (UTC)", "total so far",
                        series, _chart_events(events), steps=True,
                        colours={"promotions": "tab:green", "rejections": "tab:red", "rollbacks": "tab:orange"})
    rows = [(_stamp(e["at"]), e["kind"], e["checkpoint"], e["detail"]) for e in reversed(events)][:MAX_TABLE_ROWS]
    return [{"heading": "Timeline", "image": "timeline.png",
             "html": paragraph("Green: promoted; red: rejected or rolled back by the gate's re-check; "
                               "orange: rolled back by hand.")
             + html_table(("time (UTC)", "event", "checkpoint", "detail"), rows)}]
