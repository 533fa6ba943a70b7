import math

import pytest

from dreamd.trainers.gate.rules import cumulative_forgetting, decide, forgetting_per_slice
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
    }
    return {**base, **overrides}


def test_a_benign_candidate_is_promoted():
    decision = decide(metrics(heldout_loss=1.99), metrics(), metrics(), GateSettings())
    assert decision.promote and decision.reasons == []


@pytest.mark.parametrize(
    "overrides, failing",
    [
        ({"heldout_loss": 2.05}, "heldout_loss_rise"),  # +2.5% > 2%
        ({"probe_loss": 1.03}, "probe_loss_rise"),
        ({"probe_accuracy": 0.55}, "probe_accuracy_drop"),
        ({"kl_to_base": 0.5}, "kl_to_base"),
        ({"fingerprint_to_base": 0.5}, "fingerprint_to_base"),
        ({"slice_losses": {"2026-01": 2.2, "2026-02": 2.4}}, "cumulative_forgetting"),
        ({"probe_loss": math.nan}, "probe_loss"),
        ({"acquisition_loss": math.inf}, "acquisition_loss"),
    ],
)
def test_each_regression_rejects_and_says_why(overrides, failing):
    decision = decide(metrics(**overrides), metrics(), metrics(), GateSettings())
    assert not decision.promote
    assert any(reason.startswith(failing) for reason in decision.reasons), decision.reasons
    assert "rejected" in decision.summary()


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
            assert any(r.startswith("cumulative_forgetting") for r in decision.reasons)
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
