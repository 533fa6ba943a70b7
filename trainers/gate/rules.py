"""The quality gate: given a candidate's evaluation, promote it or reject it, with reasons.

Pure decisions over numbers (no model here), so every rule can be tested on fixed metrics. Every
check belongs to one family, and a rejection names the families that failed:

- damage: general probes (accuracy and reference loss) and KL on the anchor answers, against the
  frozen *base* — lifetime budgets, so a slow erosion over many small promoted rounds is caught
  (each round may pass against its parent while the sum does not pass against the base). An
  accuracy fall past its budget is damage only when it is more than chance: probe by probe, the
  candidate must have lost significantly more of the base's right answers than it gained (a sign
  test). On the default 135M model a round's greedy accuracy on 230 probes moves by several
  points with the training seed alone, both ways, so the bare budget rejected noise (measured:
  the README's "The quality gate");
- learning: the newest memories asked in other words must not get worse against `current`;
- retention: older memories asked in other words, and the held-out exchanges, must not get worse
  against `current` (beyond a tolerance), nor drift from the base.

A candidate is promoted only if every check passes and every number is finite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from dreamd.trainers.settings import GateSettings

FAMILIES = ("damage", "learning", "retention")


@dataclass
class Check:
    metric: str
    value: float
    limit: float
    passed: bool
    rule: str
    family: str = "damage"
    detail: str = ""  # what else the verdict rests on, for the reason

    def describe(self) -> str:
        verdict = "ok" if self.passed else "FAILED"
        detail = f"; {self.detail}" if self.detail else ""
        return f"{self.family}: {self.metric} {self.value:.4g} ({self.rule} {self.limit:.4g}{detail}): {verdict}"


@dataclass
class Decision:
    promote: bool
    checks: list[Check] = field(default_factory=list)

    @property
    def reasons(self) -> list[str]:
        """Why it was rejected (empty when promoted)."""
        return [check.describe() for check in self.checks if not check.passed]

    @property
    def failed(self) -> list[str]:
        """The families that failed, in the order damage, learning, retention."""
        return [f for f in FAMILIES if any(c.family == f and not c.passed for c in self.checks)]

    def summary(self) -> str:
        return "promoted" if self.promote else f"rejected ({', '.join(self.failed)}): " + "; ".join(self.reasons)


def relative_rise(new: float, old: float) -> float:
    return (new - old) / max(abs(old), 1e-9)


def decide(candidate: dict, current: dict | None, base: dict, settings: GateSettings) -> Decision:
    """`candidate`, `current` and `base` are metric dicts as `evaluate` produces them.

    With `current` None only the checks against the base are made (re-checking the current model
    itself: many promoted rounds may each have moved it a little, which those budgets, not the
    per-round tolerances, are for). A metric that is None (nothing to measure yet: no memories, no
    held-out exchanges) skips its checks.
    """
    checks: list[Check] = []

    def check(family: str, metric: str, value: float, limit: float, rule: str) -> None:
        finite = math.isfinite(value)
        passed = finite and (value <= limit if rule == "<=" else value >= limit)
        checks.append(Check(metric, value, limit, passed, rule, family))

    def both(name: str, other: dict | None) -> bool:
        return other is not None and candidate.get(name) is not None and other.get(name) is not None

    for name, number in _numbers(candidate):
        if not math.isfinite(number):
            checks.append(Check(name, number, 0.0, False, "finite", family_of(name)))

    checks.append(accuracy_check(candidate, base, settings))
    check("damage", "probe_loss_rise", relative_rise(candidate["probe_loss"], base["probe_loss"]),
          settings.max_probe_loss_increase, "<=")
    check("damage", "kl_to_base", candidate["kl_to_base"], settings.max_kl_to_base, "<=")
    if settings.min_fingerprint_similarity > 0:
        check("damage", "fingerprint_to_base", candidate["fingerprint_to_base"],
              settings.min_fingerprint_similarity, ">=")
    # Against `current`: (family, reported name, metric, a loss (relative rise) or a recall (fall), budget).
    for family, name, metric, kind, limit in (
        ("learning", "learning_loss_rise", "acquisition_loss", "loss", settings.max_learning_loss_increase),
        ("learning", "learning_recall_drop", "acquisition_recall", "recall", settings.max_learning_recall_drop),
        ("retention", "retention_loss_rise", "retention_loss", "loss", settings.max_retention_loss_increase),
        ("retention", "retention_recall_drop", "retention_recall", "recall", settings.max_retention_recall_drop),
        ("retention", "heldout_loss_rise", "heldout_loss", "loss", settings.max_heldout_loss_increase),
    ):
        if both(metric, current):
            worse = (relative_rise(candidate[metric], current[metric]) if kind == "loss"
                     else current[metric] - candidate[metric])
            check(family, name, worse, limit, "<=")
    check("retention", "cumulative_forgetting", cumulative_forgetting(candidate["slice_losses"], base["slice_losses"]),
          settings.max_cumulative_forgetting, "<=")
    return Decision(promote=all(c.passed for c in checks), checks=checks)


def accuracy_check(candidate: dict, base: dict, settings: GateSettings) -> Check:
    """Damage by probe accuracy: a fall within `max_probe_accuracy_drop` passes; a larger one fails
    when the probes lost against the base outnumber those gained beyond chance (one-sided sign
    test under `probe_accuracy_significance`), or when there is no probe-by-probe record to test."""
    drop, limit = base["probe_accuracy"] - candidate["probe_accuracy"], settings.max_probe_accuracy_drop
    within = math.isfinite(drop) and drop <= limit
    changed = lost_and_gained(candidate.get("probe_hits"), base.get("probe_hits"))
    if changed is None:
        return Check("probe_accuracy_drop", drop, limit, within, "<=")
    lost, gained = changed
    p_value = sign_test(lost, gained)
    chance = p_value >= settings.probe_accuracy_significance
    verdict = "" if within else (", not beyond chance" if chance else ", beyond chance")
    return Check("probe_accuracy_drop", drop, limit, within or (math.isfinite(drop) and chance), "<=",
                 detail=f"{lost} probes lost, {gained} gained, sign test p {p_value:.2g}{verdict}")


def lost_and_gained(candidate_hits: str | None, base_hits: str | None) -> tuple[int, int] | None:
    """(probes the base answered and the candidate misses, the reverse), or None when either has
    no record or they are of different banks."""
    if not candidate_hits or not base_hits or len(candidate_hits) != len(base_hits):
        return None
    pairs = list(zip(base_hits, candidate_hits, strict=True))
    return pairs.count(("1", "0")), pairs.count(("0", "1"))


def sign_test(lost: int, gained: int) -> float:
    """One-sided p-value: the chance that at least `lost` of the `lost + gained` probes whose
    answer changed changed for the worse, were worse and better equally likely."""
    changed = lost + gained
    return sum(math.comb(changed, k) for k in range(lost, changed + 1)) / 2 ** changed if changed else 1.0


def family_of(metric: str) -> str:
    """The family a measured metric belongs to (for a non-finite number's reason)."""
    if metric.startswith("acquisition"):
        return "learning"
    if metric.startswith(("retention", "heldout", "slice_losses", "forgetting")):
        return "retention"
    return "damage"


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
