"""The gate's re-check of `current` (daemon/gate/judge.py's recheck_current) on the tiny model: a
current that fails the gate, or no longer verifies, is rolled back and both the evaluation and the
pointer move are recorded; one that passes is kept. The real-model version of this path is in
tests/integration/test_quality_gate.py. The state dir and its lineage (`parent`, `child`,
`wrecked`) are the `world` fixture of tests/daemon/conftest.py.
"""

from __future__ import annotations

import json

from dreamd.daemon.config import config_from_dict
from dreamd.daemon.gate.evaluations import last_decision
from dreamd.trainers.checkpoints.pointers import BASE, read_pointer
from dreamd.trainers.gate.metrics import GENERAL_METRICS
from tests.helpers.fakes import HashEmbedder


def test_a_current_that_fails_the_gate_is_rolled_back_to_last_good(world):
    world.point(current=world.wrecked, last_good=world.parent)
    result = world.recheck()
    assert (result["checkpoint"], result["decision"], result["rolled_back_to"]) == (world.wrecked, "rolled_back",
                                                                                    world.parent)
    # Damage (against the base); it is also worse than `parent` on the newest memories (learning).
    assert any(reason.startswith("damage: fingerprint_to_base") for reason in result["reasons"]), result["reasons"]
    assert read_pointer(world.layout, "current") == world.parent == read_pointer(world.layout, "last_good")
    assert world.rows("SELECT checkpoint, decision, compared_to FROM evaluations WHERE purpose = 'recheck'") == [
        (world.wrecked, "rolled_back", world.parent)]
    assert last_decision(world.db)["decision"] == "rolled_back"
    assert world.rows("SELECT pointer, from_checkpoint, to_checkpoint, why, by FROM pointer_moves") == [
        ("current", world.wrecked, world.parent, "rolled_back", "recheck")]


def test_a_failing_current_that_is_last_good_goes_back_to_the_base(world):
    world.point(current=world.wrecked, last_good=world.wrecked)
    result = world.recheck()
    assert (result["decision"], result["rolled_back_to"]) == ("rolled_back", BASE)
    assert read_pointer(world.layout, "current") == BASE
    assert world.rows("SELECT checkpoint, decision, compared_to FROM evaluations WHERE purpose = 'recheck'") == [
        (world.wrecked, "rolled_back", BASE)]  # held to the budgets against the base only
    assert world.rows("SELECT pointer, from_checkpoint, to_checkpoint, why FROM pointer_moves") == [
        ("current", world.wrecked, BASE, "rolled_back")]


def test_a_current_that_passes_is_kept(world):
    world.point(current=world.child, last_good=world.parent)
    result = world.recheck()
    assert (result["decision"], result["rolled_back_to"], result["reasons"]) == ("kept", None, [])
    assert (read_pointer(world.layout, "current"), read_pointer(world.layout, "last_good")) == (world.child,
                                                                                              world.parent)
    assert world.rows("SELECT checkpoint, decision, compared_to FROM evaluations WHERE purpose = 'recheck'") == [
        (world.child, "kept", world.parent)]
    assert world.rows("SELECT * FROM pointer_moves") == []


def test_the_base_model_is_kept_without_evaluating_it(world):
    assert world.recheck()["decision"] == "kept" and read_pointer(world.layout, "current") == BASE
    assert world.rows("SELECT * FROM evaluations") == []


def test_a_current_that_no_longer_verifies_is_rolled_back_without_evaluating_it(world):
    world.point(current=world.wrecked, last_good=world.parent)
    weights = next((world.layout.checkpoints / world.wrecked).rglob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-16])  # damaged on disk after it became current
    result = world.recheck()
    assert (result["decision"], result["rolled_back_to"]) == ("rolled_back", world.parent)
    assert weights.name in " ".join(result["reasons"])
    assert read_pointer(world.layout, "current") == world.parent
    assert world.rows("SELECT pointer, from_checkpoint, to_checkpoint, why, by FROM pointer_moves") == [
        ("current", world.wrecked, world.parent, "rolled_back", "recheck")]
    assert world.rows("SELECT * FROM evaluations WHERE purpose = 'recheck'") == []


def test_when_the_memories_change_only_what_they_ask_is_measured_again(world, monkeypatch):
    # The base and the current model were evaluated on one suite; then the suite changes (here: one
    # more newest memory asked, as after an ingest). Their probe, anchor and fingerprint numbers
    # depend on the weights alone: they are taken from the earlier evaluations, not measured again.
    from dreamd.daemon.gate import judge

    world.point(current=world.parent, last_good=world.parent)
    given: list[tuple[str, bool]] = []
    real_evaluate = judge.evaluate

    def spy(loaded, suite, embed, base, previous=None, general=None):
        given.append((len(suite.acquisition), general is not None))
        return real_evaluate(loaded, suite, embed, base, previous, general)

    monkeypatch.setattr(judge, "evaluate", spy)
    first = judge.judge_candidate(world.config, world.layout, world.db, world.child, HashEmbedder().encode)
    judge.apply_judgement(world.layout, world.db, first)
    assert given == [(2, False)] * 3  # base, current, candidate: all measured whole
    changed = world.config.to_dict()
    changed["evaluation"]["acquisition_count"] = 3
    config = config_from_dict(changed)
    given.clear()
    second = judge.judge_candidate(config, world.layout, world.db, world.child, HashEmbedder().encode)
    # The base and `current` (the child, promoted or not, or the parent) reuse their general numbers;
    # the candidate is always measured whole.
    assert given[:-1] == [(3, True)] * (len(given) - 1) and given[-1] == (3, False) and len(given) in (2, 3)
    assert second.suite_key != first.suite_key
    rows = world.rows("SELECT suite_key, metrics FROM evaluations WHERE checkpoint = 'base' ORDER BY id")
    assert len(rows) == 2 and rows[0][0] != rows[1][0]
    old, new = (json.loads(m) for _key, m in rows)
    assert all(old[k] == new[k] for k in GENERAL_METRICS) and old["general_key"] == new["general_key"]
    assert new["acquisition_loss"] is not None
