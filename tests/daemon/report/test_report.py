"""`dreamctl report` and the history it draws from (migration m005_history, daemon/gate/history.py),
on a real SQLite store written through the real functions where they exist."""

import json
import re
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

from dreamd.daemon.cli.dreamctl import main as dreamctl
from dreamd.daemon.gate.evaluations import record
from dreamd.daemon.gate.history import (
    MANUAL_ROLLBACK,
    record_pointer_moves,
    record_training_round,
    rollback_and_record,
)
from dreamd.daemon.gate.judge import Judgement, apply_judgement
from dreamd.daemon.report.report import reason_kind
from dreamd.daemon.service.state_dir import StateLayout
from dreamd.memory_graph.database import migrations
from dreamd.memory_graph.database.store import open_store, write
from dreamd.trainers.checkpoints.manifest import Manifest, new_checkpoint_id, write_checkpoint
from dreamd.trainers.checkpoints.pointers import BASE, read_pointer, set_pointer
from dreamd.trainers.gate.rules import Decision

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
METRICS = {"heldout_loss": 2.0, "slice_losses": {"slice-000": 2.0}, "probe_loss": 1.0, "probe_accuracy": 0.6,
           "kl_to_base": 0.01, "fingerprint_to_base": 0.95, "fingerprint_to_previous": 0.97,
           "acquisition_loss": 3.0}


def run(*args):
    return CliRunner().invoke(dreamctl, list(args), catch_exceptions=False)


def fake_checkpoint(layout: StateLayout, parent: str | None = None) -> str:
    """A checkpoint that verifies (a JSON payload, no weights): enough for pointers and rollback."""
    manifest = Manifest(id=new_checkpoint_id(), parent=parent, step=1, created_at=time.time(), mode="lora",
                        config={}, files={}, examples=[])

    def write_files(folder):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "weights.json").write_text("{}")

    write_checkpoint(layout.checkpoints, manifest, write_files)
    return manifest.id


def add_graph(db, at: float, name: str, exchanges: int) -> None:
    """One ingested source: a conversation of `exchanges` user/assistant pairs, one memory each."""
    with write(db):
        source = db.execute(
            "INSERT INTO sources (sha256, name, format, bytes, conversations, messages, duplicate_messages, skipped, "
            "skip_reasons, ingested_at) VALUES (?, ?, 'openai', 1, 1, ?, 0, 0, '[]', ?)",
            (name, name, exchanges * 2, at)).lastrowid
        conversation = db.execute("INSERT INTO conversations (key, source_id, position) VALUES (?, ?, 'line 1')",
                                  (name, source)).lastrowid
        for i in range(exchanges):
            ids = [db.execute("INSERT INTO messages (sha256, conversation_id, source_id, seq, role, text, position) "
                              "VALUES (?, ?, ?, ?, ?, 'text', 'line 1')",
                              (f"{name}-{i}-{role}", conversation, source, 2 * i + k, role)).lastrowid
                   for k, role in enumerate(("user", "assistant"))]
            db.execute("INSERT INTO memory_nodes (conversation_id, first_message_id, last_message_id, text) "
                       "VALUES (?, ?, ?, 'text')", (conversation, ids[0], ids[1]))


def add_dream(db, batch: str, accepted: bool, reasons: list[str]) -> None:
    with write(db):
        db.execute(
            "INSERT INTO dreams (batch, created_at, model, seed, node_ids, walk, fragments, temperature, scenario, "
            "response, generated_tokens, scores, accepted, reasons, status) "
            "VALUES (?, ?, 'm', 1, '[1, 2]', '[[1, 2]]', '[]', 0.8, 's', 'r', 5, '{}', ?, ?, ?)",
            (batch, time.time(), int(accepted), json.dumps(reasons), "accepted" if accepted else "rejected"))


def judgement(candidate: str, promote: bool, **metrics) -> Judgement:
    return Judgement(candidate, "base", "suite", {**METRICS, **metrics}, np.zeros((6, 4), dtype=np.float32),
                     Decision(promote), 1.5)


@pytest.fixture
def layout(tmp_path):
    return StateLayout(tmp_path / "state").ensure()


@pytest.fixture
def history(layout):
    """A state dir after two cycles: graph, dreams, two rounds, one promotion, one rejection,
    a kept re-check and a manual rollback (through dreamctl)."""
    db = open_store(layout.database)
    add_graph(db, time.time() - 3600, "a.jsonl", 2)
    add_graph(db, time.time() - 1800, "b.jsonl", 3)
    add_dream(db, "batch1", True, ["total 0.8 >= 0.5"])
    add_dream(db, "batch1", True, ["total 0.7 >= 0.5"])
    add_dream(db, "batch1", False, ["judge: rated 3 < 5", "total 0.3 < min_total 0.5"])
    add_dream(db, "batch2", False, ["generation timed out playing the dream out (over 300 s) <b>"])
    add_dream(db, "batch2", False, ["judge: rated 2 < 5"])
    record(db, BASE, "base", "suite", METRICS, np.zeros((6, 4)), "baseline", [], 2.0)
    first = fake_checkpoint(layout)
    record_training_round(db, checkpoint=first, parent=BASE, mode="lora", started_at=time.time() - 60,
                          finished_at=time.time(), examples=4, dream_examples=2, losses=[2.5, 2.2, 2.0])
    apply_judgement(layout, db, judgement(first, True, heldout_loss=1.9))
    second = fake_checkpoint(layout, parent=first)
    record_training_round(db, checkpoint=second, parent=first, mode="lora", started_at=time.time() - 30,
                          finished_at=time.time(), examples=2, dream_examples=0, losses=[1.9, float("nan")])
    apply_judgement(layout, db, judgement(second, False, heldout_loss=2.4))
    record(db, first, "recheck", "suite", METRICS, np.zeros((6, 4)), "kept", [], 1.0, compared_to=BASE)
    rolled = run("--state-dir", str(layout.root), "rollback", "--to-base", "--json")
    assert rolled.exit_code == 0, rolled.output
    assert json.loads(rolled.stdout)["recorded"] == 1
    return {"layout": layout, "db": db, "first": first, "second": second}


def test_history_rows_are_what_happened(history):
    db, first = history["db"], history["first"]
    rounds = db.execute("SELECT checkpoint, parent, steps, losses FROM training_rounds ORDER BY id").fetchall()
    assert [r[:3] for r in rounds] == [(first, BASE, 3), (history["second"], first, 2)]
    assert json.loads(rounds[1][3]) == [1.9, None]  # NaN is not JSON: stored as null
    moves = db.execute(
        "SELECT pointer, from_checkpoint, to_checkpoint, why, by FROM pointer_moves ORDER BY id").fetchall()
    assert moves[:2] == [("current", BASE, first, "promoted", "gate"), ("last_good", BASE, first, "promoted", "gate")]
    assert moves[2][:4] == ("current", first, BASE, MANUAL_ROLLBACK) and "dreamctl" in moves[2][4]
    assert len(moves) == 3, "a rejection moves no pointer"


def test_report_draws_every_chart_and_links_it(history, tmp_path):
    out = tmp_path / "out"
    result = run("--state-dir", str(history["layout"].root), "report", "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["counts"] == {
        "evaluations": 4, "training_rounds": 2, "pointer_moves": 3, "dream_batches": 2, "dreams_accepted": 2,
        "dreams_rejected": 3, "sources": 2, "messages": 10, "memory_nodes": 5, "promotions": 1, "rejections": 1,
        "rollbacks": 1,
    }
    expected = {f"eval_{m}.png" for m in METRICS if m != "slice_losses"}
    expected |= {"training_steps.png", "training_rounds.png", "dreams.png", "graph_growth.png", "timeline.png"}
    assert set(data["images"]) == expected
    assert {p.name for p in out.glob("*.png")} == expected, "no leftover temporary files"
    for name in expected:
        raw = (out / name).read_bytes()
        assert raw.startswith(PNG_MAGIC) and len(raw) > 5000, name
    page = (out / "index.html").read_text()
    assert data["page"] == str(out / "index.html")
    assert set(re.findall(r'src="([^"]+)"', page)) == expected
    assert "&lt;b&gt;" in page and "<b>" not in page, "text from the database is escaped"
    assert "judge" in page and "generation timed out playing the dream out" in page  # reject reasons table
    human = run("--state-dir", str(history["layout"].root), "report", "--out", str(out))
    assert human.exit_code == 0 and str(out / "index.html") in human.output and "promotions" in human.output


def test_report_defaults_to_the_state_dir(history):
    layout = history["layout"]
    result = run("--state-dir", str(layout.root), "report", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["page"] == str(layout.reports / "index.html")


def test_reject_reasons_are_grouped_by_kind():
    assert reason_kind("judge: rated 3 < 5") == "judge"
    assert reason_kind("total 0.3 < min_total 0.5") == "total below min_total"
    assert reason_kind("generation timed out composing the scenario (over 300 s)") == \
        "generation timed out composing the scenario"


@pytest.mark.parametrize("empty", ["migrated", "zero bytes"])
def test_an_empty_database_gives_a_page_not_a_crash(layout, empty):
    if empty == "migrated":
        open_store(layout.database).conn.close()
    else:
        layout.database.touch()
    result = run("--state-dir", str(layout.root), "report", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["images"] == [] and not any(data["counts"].values())
    assert "Nothing yet" in (layout.reports / "index.html").read_text()
    assert "none yet" in run("--state-dir", str(layout.root), "report").output


def test_no_database_is_a_clear_failure(layout, tmp_path):
    result = run("--state-dir", str(layout.root), "report")
    assert result.exit_code == 1 and "no database" in result.output
    nowhere = tmp_path / "no-state"
    assert run("--state-dir", str(nowhere), "report", "--json").exit_code == 1
    assert not nowhere.exists(), "a failed report leaves nothing behind"


def test_an_old_database_reports_and_upgrades(layout, monkeypatch):
    """A database made before m005 is reported as it is (read-only: no upgrade), then upgraded
    by the next writer with its rows intact; its re-check rollback still shows."""
    full = list(migrations.MIGRATIONS)
    monkeypatch.setattr(migrations, "MIGRATIONS", full[:4])
    db = open_store(layout.database)
    add_graph(db, time.time() - 100, "a.jsonl", 2)
    with write(db):
        db.execute("INSERT INTO evaluations (checkpoint, purpose, suite_key, evaluated_at, seconds, metrics, "
                   "fingerprint, decision, reasons) VALUES ('c1', 'recheck', 's', ?, 1, ?, x'', 'rolled_back', "
                   "'[\"heldout loss rose\"]')", (time.time() - 50, json.dumps(METRICS)))
    db.conn.close()

    old = json.loads(run("--state-dir", str(layout.root), "report", "--json").stdout)
    assert old["counts"]["rollbacks"] == 1 and old["counts"]["training_rounds"] == 0
    assert "training_steps.png" not in old["images"]

    monkeypatch.setattr(migrations, "MIGRATIONS", full)
    db = open_store(layout.database)
    names = [r[0] for r in db.execute("SELECT name FROM _migrations ORDER BY number").fetchall()]
    # everything after the first four, in order
    assert names[4:] == ["m005_history", "m006_dream_kinds", "m007_dream_teacher"]
    assert {"kind", "target"} <= {r[1] for r in db.execute("PRAGMA table_info(dreams)").fetchall()}
    assert db.execute("SELECT count(*) FROM memory_nodes").fetchone()[0] == 2
    db.conn.close()
    new = json.loads(run("--state-dir", str(layout.root), "report", "--json").stdout)
    assert new["counts"] == old["counts"]


def test_rollback_without_a_database_still_rolls_back(layout):
    checkpoint = fake_checkpoint(layout)
    set_pointer(layout, "current", checkpoint)
    result = rollback_and_record(layout, BASE, by="test")
    assert result["changed"] and result["recorded"] == 0 and read_pointer(layout, "current") == BASE
    assert not layout.database.exists(), "recording never creates the database"


def test_pointer_moves_record_only_what_moved(layout):
    db = open_store(layout.database)
    same = {"current": "a", "last_good": "a"}
    assert record_pointer_moves(db, same, same, "promoted", "gate") == []
    moved = record_pointer_moves(db, same, {"current": "b", "last_good": "a"}, "rolled_back", "recheck")
    assert [(m["pointer"], m["from_checkpoint"], m["to_checkpoint"]) for m in moved] == [("current", "a", "b")]


def test_dreamctl_lists_report_and_does_not_import_matplotlib_at_start():
    assert "report" in run("--help").output
    assert "Exit codes" in run("report", "--help").output
    code = "import sys, dreamd.daemon.cli.dreamctl; assert 'matplotlib' not in sys.modules, 'heavy import'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_cycles_training_step_records_its_round(layout, tmp_path):
    from dreamd.daemon.config import config_from_dict
    from dreamd.daemon.loop import cycle
    from tests.helpers.tiny import tiny_llama, tiny_tokenizer

    model_dir = tmp_path / "tiny-model"
    tiny_llama().save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    config = config_from_dict({"model": {"path": str(model_dir), "device": "cpu"},
                               "training": {"batch_size": 1, "optimizer": "adamw"},
                               "dreams": {"replay_fraction": 0.0, "anchor_fraction": 0.0}})
    db = open_store(layout.database)
    for batch in ("b1", "b1", "b1"):
        add_dream(db, batch, True, ["total 0.8 >= 0.5"])
    examples = cycle.training_examples(config, layout, db, seed=1, held_out=frozenset())
    result = cycle.train_candidate(config, layout, db, examples)
    assert result["anchor_examples"] == 0 and result["example_ids"] == [e.id for e in examples]
    row = db.execute("SELECT checkpoint, parent, mode, examples, dream_examples, steps, losses, "
                     "finished_at >= started_at FROM training_rounds").fetchall()
    assert len(row) == 1
    checkpoint, parent, mode, examples, dreams, steps, losses, ordered = row[0]
    assert (checkpoint, parent, mode) == (result["candidate"], BASE, "lora") and ordered
    epochs = config.training.epochs  # every example once per epoch, one per step (batch size 1)
    assert examples == dreams == 3 and steps == 3 * epochs == len(json.loads(losses)) and epochs >= 1
    assert json.loads(losses)[0] == pytest.approx(result["first_loss"])
