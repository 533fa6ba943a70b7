"""The dream cycle's recipe (daemon/loop/cycle.py) on the tiny model, the sample memory graph, the
hash embedder and a scripted generator: its early stops, a whole cycle to the gate, and dreams that
are spent only once the gate has decided."""

from __future__ import annotations

import json

import pytest

from dreamd.daemon.gate.suite import held_out_nodes
from dreamd.daemon.loop import cycle
from dreamd.daemon.service.state_dir import StateLayout
from dreamd.memory_graph.database.store import open_store
from dreamd.trainers.checkpoints.pointers import BASE, read_pointer
from tests.helpers.daemon_harness import save_tiny_model
from tests.helpers.dreams import install_scripted, sample_graph
from tests.helpers.fakes import HashEmbedder

SEED = 7


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture
def config(tiny_model_dir):
    return {
        "model": {"path": str(tiny_model_dir), "device": "cpu"},
        "graph": {"min_similarity": 0.2},  # as tests/helpers/dreams.py's graph: the hash embedder's scale
        "dreams": {"per_cycle": 3, "batch_size": 3, "scenario_tokens": 16, "response_tokens": 16},
        # Divergence on a random tiny model is noise: the threshold is opened, the other scores decide.
        "signal": {"min_divergence": -100.0, "min_total": 0.3},
        "training": {"batch_size": 2, "optimizer": "adamw", "max_context_tokens": 256},
        "evaluation": {"heldout_percent": 30, "slice_size": 3, "max_slices": 2, "acquisition_count": 2,
                       "max_new_tokens": 4},
    }


@pytest.fixture
def scripted(monkeypatch):
    """The hash embedder for the cycle, and a scripted generator for composing, playing out and judging."""
    monkeypatch.setattr(cycle, "Embedder", lambda settings: HashEmbedder())

    return lambda **kwargs: install_scripted(monkeypatch, **kwargs)


@pytest.fixture
def state(tmp_path):
    """A state dir holding the memory graph of the six sample logs."""
    sample_graph(tmp_path / "state").db.conn.close()
    return StateLayout(tmp_path / "state")


def table_counts(layout: StateLayout) -> dict[str, int]:
    db = open_store(layout.database)
    try:
        return {"trained_dreams": db.execute("SELECT count(*) FROM dreams WHERE trained_in IS NOT NULL").fetchone()[0],
                "rounds": db.execute("SELECT count(*) FROM training_rounds").fetchone()[0],
                "gated": db.execute("SELECT count(*) FROM evaluations WHERE purpose = 'candidate'").fetchone()[0]}
    finally:
        db.conn.close()


def test_without_memories_the_cycle_stops_before_dreaming(tmp_path, config, scripted):
    generator = scripted()
    result = cycle.run_cycle(config, str(tmp_path / "empty"), seed=SEED)
    assert result == {"outcome": cycle.NO_COLLISIONS, "stopped_at": "dreams",
                      "steps": {"dreams": {"stop": True, "outcome": cycle.NO_COLLISIONS, "dreams": 0}}}
    assert generator.calls == []


def test_when_no_dream_is_accepted_the_cycle_stops_and_trains_nothing(state, config, scripted):
    scripted(fail_on="respond")
    result = cycle.run_cycle(config, str(state.root), seed=SEED)
    assert (result["outcome"], result["stopped_at"], list(result["steps"])) == ("no dream accepted", "dreams",
                                                                                ["dreams"])
    made = result["steps"]["dreams"]
    assert (made["dreams"], made["accepted"], made["model"], made["seed"]) == (3, 0, BASE, SEED)
    assert table_counts(state) == {"trained_dreams": 0, "rounds": 0, "gated": 0}
    assert not list(state.checkpoints.iterdir())


def test_with_nothing_to_train_on_the_cycle_stops_before_training(state, config, scripted, monkeypatch):
    scripted()
    monkeypatch.setattr(cycle, "training_set", lambda *args, **kwargs: [])
    result = cycle.run_cycle(config, str(state.root), seed=SEED)
    assert (result["outcome"], result["stopped_at"]) == (cycle.NOTHING_TO_TRAIN, "training")
    assert result["steps"]["dreams"]["accepted"] > 0
    assert result["steps"]["training"] == {"stop": True, "outcome": cycle.NOTHING_TO_TRAIN, "examples": 0}
    assert table_counts(state)["rounds"] == 0


def test_a_whole_cycle_trains_gates_and_then_spends_its_dreams(state, config, scripted):
    scripted()
    result = cycle.run_cycle(config, str(state.root), seed=SEED)
    steps = result["steps"]
    assert list(steps) == ["dreams", "training", "gate", "promote"] and "stopped_at" not in result
    candidate = steps["training"]["candidate"]
    assert steps["training"]["parent"] == BASE and steps["training"]["examples"] >= steps["dreams"]["accepted"] > 0
    assert steps["training"]["first_loss"] is not None and steps["training"]["last_loss"] is not None
    decision = steps["gate"]["decision"]
    assert result["gate"] == steps["gate"] and steps["gate"]["checkpoint"] == candidate
    assert result["outcome"] == steps["promote"]["outcome"] == decision in ("promoted", "rejected")
    assert steps["gate"]["compared_to"] == BASE and isinstance(steps["gate"]["reasons"], list)
    expected = candidate if decision == "promoted" else BASE
    assert (read_pointer(state, "current"), read_pointer(state, "last_good")) == (expected, expected)
    assert (steps["promote"]["current"], steps["promote"]["last_good"]) == (expected, expected)
    counts = table_counts(state)
    assert counts == {"trained_dreams": steps["training"]["dream_examples"], "rounds": 1, "gated": 1}
    assert counts["trained_dreams"] > 0
    # What the steps report: accepted dreams by kind, the round's example ids, the gate's failed families.
    made = steps["dreams"]
    assert sum(made["accepted_by_kind"].values()) == made["accepted"] and made["logged_targets"] >= 0
    ids = steps["training"]["example_ids"]
    assert len(ids) == steps["training"]["examples"]
    assert steps["training"]["anchor_examples"] == sum(i.startswith("anchor:") for i in ids)
    failed = steps["gate"]["failed"]
    assert failed == [] if decision == "promoted" else failed and set(failed) <= {"damage", "learning", "retention"}
    # Held-out memories are never a dream's notes, nor replayed.
    db = open_store(state.database)
    try:
        held = set(held_out_nodes(db, config["evaluation"]["heldout_percent"]))
        assert held
        for node_ids, fragments in db.execute("SELECT node_ids, fragments FROM dreams").fetchall():
            assert len(json.loads(fragments)) == len([n for n in json.loads(node_ids) if n not in held])
    finally:
        db.conn.close()
    assert not {int(i.split(":")[1]) for i in ids if i.startswith("replay:")} & held


def test_dreams_stay_untrained_when_the_gate_fails(state, config, scripted, monkeypatch):
    scripted()

    def broken_gate(*args, **kwargs):
        raise RuntimeError("the evaluation ran out of memory")

    monkeypatch.setattr(cycle, "judge_candidate", broken_gate)
    with pytest.raises(RuntimeError, match="out of memory"):
        cycle.run_cycle(config, str(state.root), seed=SEED)
    # The round ran and is recorded, but nothing moved and its dreams are left for the next cycle.
    assert table_counts(state) == {"trained_dreams": 0, "rounds": 1, "gated": 0}
    assert read_pointer(state, "current") == BASE == read_pointer(state, "last_good")
