"""The quality gate: given a candidate's evaluation, promote it or reject it, with reasons.

Pure decisions over numbers (no model here), so every rule can be tested on fixed metrics. A
candidate is promoted only if every regression check passes and every number is finite; a check
compares against the current model, and the drift checks against the frozen base, so a slow erosion
over many small promoted rounds is caught too (each round may pass against its parent while the
sum does not pass against the base).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from dreamd.daemon.service.settings_base import require, setting


@dataclass
class EvalSettings:
    """What every candidate checkpoint is evaluated on (sizes bound the gate's cost)."""

    heldout_percent: int = setting(
        10, "Percent of ingested exchanges set aside for evaluation and never trained on, chosen by content hash "
            "(so the choice is made once, at ingest, and never changes)."
    )
    slice_size: int = setting(8, "Held-out exchanges per time slice (in ingest order), for forgetting over time.")
    max_slices: int = setting(
        6, "Time slices evaluated at most; with more, evenly spaced ones are taken, the oldest and newest always."
    )
    acquisition_count: int = setting(
        8, "Recently ingested (trained-on) exchanges whose answers are asked for again in other words."
    )
    history_messages: int = setting(4, "Earlier messages of the conversation kept as context of an exchange.")
    max_new_tokens: int = setting(32, "Longest greedy answer to a probe or fingerprint prompt, in tokens.")

    def __post_init__(self) -> None:
        require(0 <= self.heldout_percent <= 50, "heldout_percent", "an integer from 0 to 50", self.heldout_percent)
        require(1 <= self.slice_size <= 256, "slice_size", "an integer from 1 to 256", self.slice_size)
        require(1 <= self.max_slices <= 64, "max_slices", "an integer from 1 to 64", self.max_slices)
        require(0 <= self.acquisition_count <= 256, "acquisition_count", "from 0 to 256", self.acquisition_count)
        require(0 <= self.history_messages <= 64, "history_messages", "from 0 to 64", self.history_messages)
        require(1 <= self.max_new_tokens <= 512, "max_new_tokens", "from 1 to 512", self.max_new_tokens)


@dataclass
class GateSettings:
    """When a candidate checkpoint may become current."""

    max_heldout_loss_increase: float = setting(
        0.02, "Largest relative rise of the held-out conversation loss against the current model (0.02 = +2%)."
    )
    max_probe_loss_increase: float = setting(
        0.02, "Largest relative rise of the capability probes' reference-answer loss against the current model."
    )
    max_probe_accuracy_drop: float = setting(
        0.0, "Largest fall of the probes' greedy accuracy against the current model (0 = never lower)."
    )
    max_kl_to_base: float = setting(
        0.15, "Largest mean KL divergence (nats) of next-token distributions from the base model on the probe prompts."
    )
    min_fingerprint_similarity: float = setting(
        0.75, "Smallest mean cosine similarity between the candidate's and the base's answers to the fingerprint prompts."
    )
    max_cumulative_forgetting: float = setting(
        0.05, "Largest mean relative rise, over the time slices of held-out exchanges, of the loss against the base model."
    )

    def __post_init__(self) -> None:
        for name in ("max_heldout_loss_increase", "max_probe_loss_increase", "max_cumulative_forgetting"):
            value = getattr(self, name)
            require(0 <= value <= 10, name, "a number from 0 to 10", value)
        require(0 <= self.max_probe_accuracy_drop <= 1, "max_probe_accuracy_drop", "from 0 to 1", self.max_probe_accuracy_drop)
        require(self.max_kl_to_base > 0, "max_kl_to_base", "a positive number of nats", self.max_kl_to_base)
        require(-1 <= self.min_fingerprint_similarity <= 1, "min_fingerprint_similarity", "from -1 to 1",
                self.min_fingerprint_similarity)


@dataclass
class Check:
    metric: str
    value: float
    limit: float
    passed: bool
    rule: str

    def describe(self) -> str:
        verdict = "ok" if self.passed else "FAILED"
        return f"{self.metric} {self.value:.4g} ({self.rule} {self.limit:.4g}): {verdict}"


@dataclass
class Decision:
    promote: bool
    checks: list[Check] = field(default_factory=list)

    @property
    def reasons(self) -> list[str]:
        """Why it was rejected (empty when promoted)."""
        return [check.describe() for check in self.checks if not check.passed]

    def summary(self) -> str:
        return "promoted" if self.promote else "rejected: " + "; ".join(self.reasons)


def relative_rise(new: float, old: float) -> float:
    return (new - old) / max(abs(old), 1e-9)


def decide(candidate: dict, current: dict | None, base: dict, settings: GateSettings) -> Decision:
    """`candidate`, `current` and `base` are metric dicts as `evaluate` produces them.

    With `current` None only the budgets against the base are checked (re-checking the current
    model itself: many promoted rounds may each have moved it a little, which those budgets, not the
    per-round tolerances, are for). A held-out loss of None (nothing held out yet) skips that check.
    """
    checks: list[Check] = []

    def check(metric: str, value: float, limit: float, rule: str) -> None:
        finite = math.isfinite(value)
        passed = finite and (value <= limit if rule == "<=" else value >= limit)
        checks.append(Check(metric, value, limit, passed, rule))

    for name, number in _numbers(candidate):
        if not math.isfinite(number):
            checks.append(Check(name, number, 0.0, False, "finite"))

    if current is not None:
        if candidate["heldout_loss"] is not None and current["heldout_loss"] is not None:
            check("heldout_loss_rise", relative_rise(candidate["heldout_loss"], current["heldout_loss"]),
                  settings.max_heldout_loss_increase, "<=")
        check("probe_loss_rise", relative_rise(candidate["probe_loss"], current["probe_loss"]),
              settings.max_probe_loss_increase, "<=")
        check("probe_accuracy_drop", current["probe_accuracy"] - candidate["probe_accuracy"],
              settings.max_probe_accuracy_drop, "<=")
    check("kl_to_base", candidate["kl_to_base"], settings.max_kl_to_base, "<=")
    check("fingerprint_to_base", candidate["fingerprint_to_base"], settings.min_fingerprint_similarity, ">=")
    check("cumulative_forgetting", cumulative_forgetting(candidate["slice_losses"], base["slice_losses"]),
          settings.max_cumulative_forgetting, "<=")
    return Decision(promote=all(c.passed for c in checks), checks=checks)


def cumulative_forgetting(slice_losses: dict[str, float], base_slice_losses: dict[str, float]) -> float:
    """Mean relative rise of each time slice's held-out loss against the base model's."""
    shared = [s for s in slice_losses if s in base_slice_losses]
    if not shared:
        return 0.0
    return sum(relative_rise(slice_losses[s], base_slice_losses[s]) for s in shared) / len(shared)


def forgetting_per_slice(history: list[dict[str, float]], now: dict[str, float]) -> dict[str, dict[str, float]]:
    """Continual-learning bookkeeping per time slice of held-out exchanges (losses: lower is better).

    forgetting: the loss now minus the best (lowest) loss the slice ever had in `history` (the
    promoted checkpoints so far, oldest first) — how much of what was once reached is lost.
    backward_transfer: the slice's loss when first measured minus its loss now — how later
    training helped (positive) or hurt (negative) it.
    """
    result = {}
    for name, loss in now.items():
        seen = [h[name] for h in history if name in h]
        result[name] = {
            "forgetting": loss - min(seen) if seen else 0.0,
            "backward_transfer": seen[0] - loss if seen else 0.0,
        }
    return result


def _numbers(metrics: dict, prefix: str = ""):
    for key, value in metrics.items():
        if isinstance(value, dict):
            yield from _numbers(value, f"{prefix}{key}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield f"{prefix}{key}", float(value)
