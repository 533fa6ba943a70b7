import math

import pytest

from dreamd.trainers.gate.rules import (
    FAMILIES,
    cumulative_forgetting,
    decide,
    forgetting_per_slice,
    lost_and_gained,
    sign_test,
)
from dreamd.trainers.settings import GateSettings


def metrics(**overrides):
    base = {
        "heldout_loss": 2.0,
        "slice_losses": {"2026-01": 2.0, "2026-02": 2.2},
        "probe_loss": 1.0,
        "probe_accuracy": 0.6,
        "kl_to_base": 0.01,
        "fingerprint_to_base": 0.95,
        "fingerprint_to_previous": 0.97,
        "acquisition_loss": 3.0,
        "acquisition_recall": 0.5,
        "retention_loss": 2.5,
        "retention_recall": 0.75,
    }
    return {**base, **overrides}


def test_a_benign_candidate_is_promoted():
    decision = decide(metrics(heldout_loss=1.99, acquisition_loss=2.5), metrics(), metrics(), GateSettings())
    assert decision.promote and decision.reasons == [] and decision.failed == []
    assert decision.summary() == "promoted"
    assert {c.family for c in decision.checks} == set(FAMILIES)


@pytest.mark.parametrize(
    "overrides, family, failing",
    [
        ({"probe_loss": 1.04}, "damage", "probe_loss_rise"),  # +4% > 3%
        ({"probe_accuracy": 0.55}, "damage", "probe_accuracy_drop"),  # 5 points > 2
        ({"kl_to_base": 0.5}, "damage", "kl_to_base"),
        ({"probe_loss": math.nan}, "damage", "probe_loss"),
        ({"acquisition_loss": 3.1}, "learning", "learning_loss_rise"),  # any rise
        ({"acquisition_recall": 0.375}, "learning", "learning_recall_drop"),
        ({"acquisition_loss": math.inf}, "learning", "learning_loss_rise"),
        ({"retention_loss": 2.7}, "retention", "retention_loss_rise"),  # +8% > 5%
        ({"retention_recall": 0.5}, "retention", "retention_recall_drop"),  # 0.25 > 0.125
        ({"heldout_loss": 2.15}, "retention", "heldout_loss_rise"),  # +7.5% > 5%
        ({"slice_losses": {"2026-01": 2.2, "2026-02": 2.4}}, "retention", "cumulative_forgetting"),
    ],
)
def test_each_regression_rejects_and_says_why(overrides, family, failing):
    decision = decide(metrics(**overrides), metrics(), metrics(), GateSettings())
    assert not decision.promote
    assert family in decision.failed
    assert any(reason.startswith(f"{family}: {failing} ") for reason in decision.reasons), decision.reasons
    assert decision.summary().startswith("rejected (")


def hits(right: int, wrong: int) -> str:
    return "1" * right + "0" * wrong


def test_an_accuracy_fall_past_the_budget_that_chance_explains_is_not_damage():
    # 100 probes, base 50 right. The candidate: 14 of the base's right answers lost, 10 others
    # gained (4 points down): lost and gained so evenly split happen by chance (p 0.27).
    base = metrics(probe_accuracy=0.5, probe_hits=hits(50, 50))
    noisy = hits(36, 14) + hits(10, 40)
    decision = decide(metrics(probe_accuracy=0.46, probe_hits=noisy), metrics(), base, GateSettings())
    accuracy = next(c for c in decision.checks if c.metric == "probe_accuracy_drop")
    assert decision.promote and accuracy.passed
    assert "14 probes lost, 10 gained" in accuracy.describe() and "not beyond chance" in accuracy.describe()


def test_an_accuracy_fall_that_loses_probe_after_probe_is_damage():
    # A like fall, but every answer that changed got worse: not chance.
    base = metrics(probe_accuracy=0.5, probe_hits=hits(50, 50))
    consistent = hits(45, 5) + hits(0, 50)  # 5 lost, none gained: p 1/32
    decision = decide(metrics(probe_accuracy=0.45, probe_hits=consistent), metrics(), base, GateSettings())
    assert not decision.promote and decision.failed == ["damage"]
    assert decision.reasons == ["damage: probe_accuracy_drop 0.05 (<= 0.02; 5 probes lost, 0 gained, "
                                "sign test p 0.031, beyond chance): FAILED"]


def test_without_a_probe_record_or_with_the_test_off_the_bare_budget_decides():
    base = metrics(probe_accuracy=0.5, probe_hits=hits(50, 50))
    noisy = metrics(probe_accuracy=0.46, probe_hits=hits(36, 14) + hits(10, 40))
    assert not decide(noisy, metrics(), metrics(probe_accuracy=0.5), GateSettings()).promote  # base has no record
    assert not decide(metrics(probe_accuracy=0.46, probe_hits="10"), metrics(), base, GateSettings()).promote
    assert not decide(noisy, metrics(), base, GateSettings(probe_accuracy_significance=1.0)).promote
    # Within the budget the test is not needed: one lost probe passes.
    assert decide(metrics(probe_accuracy=0.49, probe_hits=hits(49, 51)), metrics(), base, GateSettings()).promote


def test_sign_test_and_probe_pairs():
    assert lost_and_gained("1100", "1010") == (1, 1)  # candidate first, then base
    assert lost_and_gained("0000", "1111") == (4, 0) and lost_and_gained(None, "1") is None
    assert sign_test(0, 0) == 1.0 and sign_test(5, 0) == 1 / 32
    assert sign_test(14, 10) == pytest.approx(0.2706, abs=1e-4)
    assert sign_test(3, 3) > 0.5 > sign_test(10, 1)


def test_failing_only_a_learning_check_names_only_learning():
    decision = decide(metrics(acquisition_loss=3.3), metrics(), metrics(), GateSettings())
    assert not decision.promote and decision.failed == ["learning"]
    assert decision.reasons == ["learning: learning_loss_rise 0.1 (<= 0): FAILED"]
    assert decision.summary() == "rejected (learning): learning: learning_loss_rise 0.1 (<= 0): FAILED"
    recall = decide(metrics(acquisition_recall=0.25), metrics(), metrics(), GateSettings())
    assert recall.failed == ["learning"] and all(r.startswith("learning:") for r in recall.reasons)


def test_damage_is_measured_against_the_base_and_learning_against_current():
    settings = GateSettings()
    base, current = metrics(), metrics(probe_accuracy=0.57, acquisition_loss=2.5)
    # As good as current on the probes, but 3 points below the base: damage.
    damaged = decide(metrics(probe_accuracy=0.57, acquisition_loss=2.5), current, base, settings)
    assert damaged.failed == ["damage"] and damaged.reasons[0].startswith("damage: probe_accuracy_drop 0.03")
    # Better than the base on the new memories, worse than current: it unlearned.
    unlearned = decide(metrics(probe_accuracy=0.6, acquisition_loss=2.8), current, base, settings)
    assert unlearned.failed == ["learning"]
    # Without current (re-checking current itself) only the checks against the base are made.
    alone = decide(metrics(acquisition_loss=9.0, retention_recall=0.0), None, base, settings)
    assert alone.promote and not any(c.family == "learning" for c in alone.checks)


def test_a_missing_metric_skips_its_checks_and_fingerprint_is_off_by_default():
    nothing = metrics(acquisition_loss=None, acquisition_recall=None, retention_loss=None, retention_recall=None,
                      heldout_loss=None)
    decision = decide(nothing, metrics(), metrics(), GateSettings())
    assert decision.promote and {c.metric for c in decision.checks} == {
        "probe_accuracy_drop", "probe_loss_rise", "kl_to_base", "cumulative_forgetting"}
    far = metrics(fingerprint_to_base=0.5)
    assert decide(far, metrics(), metrics(), GateSettings()).promote
    gated = decide(far, metrics(), metrics(), GateSettings(min_fingerprint_similarity=0.75))
    assert gated.failed == ["damage"] and gated.reasons[0].startswith("damage: fingerprint_to_base 0.5 (>= 0.75)")


def test_several_families_are_named_in_order():
    decision = decide(metrics(retention_recall=0.0, kl_to_base=1.0, acquisition_loss=4.0), metrics(), metrics(),
                      GateSettings())
    assert decision.failed == ["damage", "learning", "retention"]
    assert [r.split(":")[0] for r in decision.reasons] == ["damage", "learning", "retention"]


def test_slow_erosion_is_caught_against_the_base():
    # Each step +1.5% against its parent passes the per-round check, the sum against the base does not.
    settings = GateSettings()
    base = metrics()
    current = metrics()
    promoted = 0
    for _ in range(6):
        candidate = metrics(
            heldout_loss=current["heldout_loss"] * 1.015,
            slice_losses={k: v * 1.015 for k, v in current["slice_losses"].items()},
        )
        decision = decide(candidate, current, base, settings)
        if not decision.promote:
            assert decision.failed == ["retention"]
            assert any(r.startswith("retention: cumulative_forgetting") for r in decision.reasons)
            break
        promoted += 1
        current = candidate
    assert 1 <= promoted < 6


def test_forgetting_and_backward_transfer_per_slice():
    history = [{"a": 2.0}, {"a": 1.5, "b": 3.0}, {"a": 1.7, "b": 2.8}]
    now = {"a": 1.9, "b": 2.7, "c": 4.0}
    result = forgetting_per_slice(history, now)
    assert result["a"]["forgetting"] == pytest.approx(0.4)  # best was 1.5
    assert result["a"]["backward_transfer"] == pytest.approx(0.1)  # first seen 2.0
    assert result["b"]["forgetting"] == pytest.approx(-0.1) and result["b"]["backward_transfer"] == pytest.approx(0.3)
    assert result["c"] == {"forgetting": 0.0, "backward_transfer": 0.0}
    assert cumulative_forgetting({"a": 2.2}, {"a": 2.0}) == pytest.approx(0.1)


@pytest.mark.parametrize("values, key", [
    ({"max_learning_loss_increase": -0.1}, "max_learning_loss_increase"),
    ({"max_retention_recall_drop": 1.5}, "max_retention_recall_drop"),
    ({"max_kl_to_base": 0.0}, "max_kl_to_base"),
    ({"probe_accuracy_significance": 0.0}, "probe_accuracy_significance"),
])
def test_gate_settings_reject_bad_values_naming_the_key(values, key):
    with pytest.raises(ValueError) as caught:
        GateSettings(**values)
    assert str(caught.value).startswith(key + ": must be")
