"""The real embedded defaults: SmolLM2-135M-Instruct (converted from its GGUF) and all-MiniLM-L6-v2."""

import json
import time

import numpy as np
import pytest
from click.testing import CliRunner

from dreamd.daemon.cli.dreamctl import main as dreamctl
from dreamd.daemon.service.state_dir import StateLayout
from dreamd.memory_graph.database.store import open_store
from dreamd.memory_graph.embedder import Embedder
from dreamd.memory_graph.settings import EmbedderSettings
from dreamd.trainers.generate import chat_reply
from dreamd.trainers.model_store import SOURCE_RECORD, load_model
from dreamd.trainers.settings import ModelSettings
from tests.helpers.anchors import share_anchors

pytestmark = pytest.mark.real_model


def test_converted_copy_is_a_plain_safetensors_directory(default_model_dir):
    names = {p.name for p in default_model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", SOURCE_RECORD} <= names
    assert not any(name.endswith((".bin", ".pt", ".gguf")) for name in names)
    assert "quantization_config" not in json.loads((default_model_dir / "config.json").read_text())
    assert not default_model_dir.with_name(default_model_dir.name + ".tmp").exists()


def test_default_model_loads_fast_and_knows_paris(models_dir):
    started = time.monotonic()
    loaded = load_model(ModelSettings(device="cpu"), models_dir)  # embedded default, already converted
    seconds = time.monotonic() - started
    assert seconds < 2.0, f"loading the converted model took {seconds:.2f} s"
    assert loaded.tokenizer.chat_template, "the chat template must survive the conversion"
    answer = chat_reply(loaded, [{"role": "user", "content": "What is the capital of France?"}], max_new_tokens=20)
    assert "Paris" in answer


def test_default_embedder_places_related_sentences_closer():
    embedder = Embedder(EmbedderSettings())
    vectors = embedder.encode(
        ["The deploy failed because CI was red.", "CI was failing so the release did not go out.",
         "Tomatoes need water every two days."]
    )
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2


def test_demo_runs_on_the_bundled_samples(default_model_dir, default_anchor_cache, tmp_path):
    share_anchors(default_anchor_cache, tmp_path / "state")
    config = tmp_path / "dreamd.toml"
    config.write_text(f'[model]\npath = "{default_model_dir}"\ndevice = "cpu"\n')
    result = CliRunner().invoke(dreamctl, ["--config", str(config), "demo", "--dreams", "4", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    # The demo runs the real dreamd (a subprocess on the state dir) and stops it at the end.
    daemon = summary["daemon"]
    assert daemon["started_by_demo"] is True and daemon["exit_code"] == 0
    assert "dreamd: stopped (exit code 0)" in result.stderr and not (tmp_path / "state" / "ctl.sock").exists()
    # The samples go through the daemon's inbox: six files, one per format, ingested once.
    assert (summary["files"], summary["ingested"], summary["duplicates"]) == (6, 6, 0)
    assert summary["messages"] == 43 and summary["memories"] == 20
    assert summary["collisions"] and all(2 <= len(c["node_ids"]) <= 4 for c in summary["collisions"])
    assert summary["answer_without_memory"] and summary["answer_with_memory"]
    # Did it learn? The question from the weights alone of `current`, before and after the cycle.
    assert summary["answer_before_checkpoint"] == "base" and summary["answer_before"]
    assert summary["answer_after_checkpoint"] == (summary["cycle"]["current"] or "base") and summary["answer_after"]
    assert summary["learned"] is ("lighthouse" in summary["answer_after"].lower())
    assert f"Before the cycle (weights alone, base): {summary['answer_before']}" in result.stderr
    assert (f"After the cycle (weights alone, {summary['answer_after_checkpoint']}): {summary['answer_after']}"
            in result.stderr)
    assert summary["cycle"]["status"] == "ok" and summary["status"]["source"] == "daemon"
    assert "dreamctl status:" in result.stderr and "last gate decision" in result.stderr
    check_cycle(summary["cycle"], StateLayout(tmp_path / "state"))


def check_cycle(cycle, layout):
    """One whole dream cycle ran: every dream stored; if any was accepted, a round was trained,
    gated, recorded, and the pointers say what the gate decided."""
    db = open_store(layout.database)
    generated, accepted = db.execute("SELECT count(*), coalesce(sum(accepted), 0) FROM dreams").fetchone()
    assert generated == 4
    steps = cycle["steps"]
    if "training" not in steps:  # every dream rejected: a legitimate outcome, recorded as such
        assert accepted == 0 and cycle["current"] is None
        return
    candidate = steps["training"]["candidate"]
    assert steps["training"]["examples"] >= steps["dreams"]["accepted"] == accepted > 0
    assert (layout.checkpoints / candidate / "manifest.json").is_file()
    decision = steps["gate"]["decision"]
    assert cycle["outcome"] == decision in ("promoted", "rejected")
    assert db.execute("SELECT decision FROM evaluations WHERE checkpoint = ? AND purpose = 'candidate'",
                      (candidate,)).fetchone() == (decision,)
    expected = candidate if decision == "promoted" else None
    assert cycle["current"] == expected == cycle["last_good"]
    trained = db.execute("SELECT count(*) FROM dreams WHERE trained_in = ?", (candidate,)).fetchone()[0]
    assert trained == steps["training"]["dream_examples"] > 0
