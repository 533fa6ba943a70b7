"""The quality gate on the real default model, over a real memory graph built from the sample logs."""


import pytest

from dreamd.daemon.cli.demo import sample_files
from dreamd.daemon.config import config_from_dict
from dreamd.daemon.dreaming.training_set import replay_example
from dreamd.daemon.gate.evaluations import last_decision
from dreamd.daemon.gate.judge import Evaluator, apply_judgement, judge_candidate, recheck_current
from dreamd.daemon.gate.suite import held_out_nodes
from dreamd.daemon.service.state_dir import StateLayout
from dreamd.memory_graph.embedder import Embedder
from dreamd.memory_graph.ingest import Ingester
from dreamd.trainers.checkpoints.pointers import BASE, read_pointer, set_pointer
from dreamd.trainers.examples import TrainingExample
from dreamd.trainers.model_store import load_model
from dreamd.trainers.round import train_round
from dreamd.trainers.settings import TrainingSettings
from tests.helpers.anchors import share_anchors
from tests.helpers.noise import noise_examples

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def world(default_model_dir, default_anchor_cache, tmp_path_factory):
    config = config_from_dict({
        "model": {"path": str(default_model_dir), "device": "cpu"},
        # The samples hold 20 exchanges: hold out more than the default 10% so slices exist.
        "evaluation": {"heldout_percent": 30, "slice_size": 3, "max_slices": 3, "acquisition_count": 4},
    })
    layout = StateLayout(tmp_path_factory.mktemp("gate-state")).ensure()
    share_anchors(default_anchor_cache, layout.root)
    embedder = Embedder(config.embedder)
    ingester = Ingester(layout.inbox, layout.database, embedder, config.inbox, config.graph)
    dropped = {ingester.inbox.drop(path).name for path in sample_files()}
    ingester.drain(trusted=frozenset(dropped))
    return config, layout, ingester.db, embedder


def trained_exchanges(db, config) -> list[TrainingExample]:
    held = set(held_out_nodes(db, config.evaluation.heldout_percent))
    nodes = [n for (n,) in db.execute("SELECT id FROM memory_nodes ORDER BY id").fetchall() if n not in held]
    return [e for e in (replay_example(db, n, 2) for n in nodes) if e is not None]


def wrecked(config, layout) -> str:
    """A destructive update: a huge learning rate on garbage text."""
    wrecker = TrainingSettings(lora_learning_rate=0.05, batch_size=2, epochs=2, optimizer="adamw")
    return train_round(load_model(config.model, layout.models), noise_examples(8, "garbage"), wrecker, layout)


def test_a_destructive_round_is_rejected(world):
    config, layout, db, embedder = world
    assert held_out_nodes(db, 30), "the samples must give held-out exchanges"

    bad = wrecked(config, layout)
    result = apply_judgement(layout, db, judge_candidate(config, layout, db, bad, embedder.encode))
    assert result["decision"] == "rejected" and result["reasons"], result
    assert read_pointer(layout, "current") == BASE and read_pointer(layout, "last_good") == BASE
    # The goal is 60 s on 2 cores; measured 60.2 s and 92.7 s in two quiet runs of this test (README):
    # not met, so the bound here only catches a pathological slowdown until it is profiled.
    assert result["eval_seconds"] <= 120, "a candidate's evaluation must take at most 120 s on 2 cores"


# Four more evaluations of the whole suite (about 9 minutes on 2 cores): run with `-m slow`. The
# default run promotes real candidates in the demo and learning tests, and the tiny-model gate
# tests cover the roll-back logic.
@pytest.mark.slow
def test_benign_round_promoted_forced_bad_current_rolled_back(world):
    config, layout, db, embedder = world
    bad = wrecked(config, layout)
    # A benign round: small steps on the real exchanges. Its learning rate is pinned: the daemon's
    # default (1e-3) counts on the anchor share of every round to hold KL to the base, and this round
    # has no anchors (without them, at 1e-3: KL 0.18, over the 0.15 budget, in CI).
    good = train_round(load_model(config.model, layout.models), trained_exchanges(db, config)[:8],
                       TrainingSettings(batch_size=4, lora_learning_rate=5e-4), layout)
    result = apply_judgement(layout, db, judge_candidate(config, layout, db, good, embedder.encode))
    assert result["decision"] == "promoted", result["reasons"]
    assert read_pointer(layout, "current") == good == read_pointer(layout, "last_good")
    assert last_decision(db)["decision"] == "promoted"

    # Someone forces the rejected checkpoint to be current: the daemon's re-check rolls it back.
    set_pointer(layout, "current", bad)
    result = recheck_current(config, layout, db, embedder.encode)
    assert result["decision"] == "rolled_back" and result["rolled_back_to"] == good
    assert read_pointer(layout, "current") == good

    # A good current is kept by the re-check.
    assert recheck_current(config, layout, db, embedder.encode)["decision"] == "kept"

    # A current checkpoint damaged on disk is not evaluated: the re-check goes back at once.
    weights = next((layout.checkpoints / bad).rglob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-16])
    set_pointer(layout, "current", bad, verify=False)
    result = recheck_current(config, layout, db, embedder.encode)
    assert result["decision"] == "rolled_back" and read_pointer(layout, "current") == good
    assert weights.name in " ".join(result["reasons"])


@pytest.mark.slow  # three evaluations of the whole suite (about 5 minutes on 2 cores)
def test_metrics_are_reproducible_and_kl_grows_with_the_update(world):
    config, layout, db, embedder = world
    evaluator = Evaluator(config, layout, db, embedder.encode)
    assert evaluator.base.metrics["kl_to_base"] == 0.0

    small = train_round(load_model(config.model, layout.models), trained_exchanges(db, config)[:4],
                        TrainingSettings(batch_size=4), layout)
    large = train_round(load_model(config.model, layout.models), trained_exchanges(db, config)[:4],
                        TrainingSettings(batch_size=1, lora_learning_rate=3e-3, epochs=2), layout)
    first = evaluator.metrics_of(small, fresh=True)[0]
    again = evaluator.metrics_of(small, fresh=True)[0]
    assert first == again
    assert 0 < first["kl_to_base"] < evaluator.metrics_of(large, fresh=True)[0]["kl_to_base"]
