"""The quality gate in the loop: evaluate a checkpoint, decide, move the pointers, record why.

The rules live in trainers/gate/rules.py (pure) and the measurements in trainers/gate/metrics.py;
this module feeds them the suite built from the memory graph (daemon/gate/suite.py) and the
checkpoints, and writes the outcome to the `evaluations` table (daemon/gate/evaluations.py):

- `judge_candidate` evaluates a new round's candidate against `current` and the base, and
  decides without moving anything; `apply_judgement` then promotes it (`current` and `last_good`
  move) on a passing decision or records the rejection. Two steps, because the cycle has work to
  do in between (the dreams are spent only once the gate has decided).
- `recheck_current` re-evaluates `current` and rolls back to `last_good` (or the base) when it
  fails the gate or no longer verifies.

The base's and the current model's metrics are cached per suite key: the same weights on the same
suite give the same numbers. When the memories changed since (a new suite key), what they measured
on the shipped banks alone (probes, anchors, fingerprint: `general_key`) is reused and only what
the memories ask is measured again: three whole evaluations a round were most of the gate's time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import structlog
from sqlite_utils import Database

from dreamd.daemon.config import Config
from dreamd.daemon.gate.evaluations import promoted_history, record, stored, stored_general
from dreamd.daemon.gate.history import PROMOTED, ROLLED_BACK, read_pointers, record_pointer_moves, rollback_and_record
from dreamd.daemon.gate.suite import build_suite
from dreamd.daemon.service.state_dir import StateLayout
from dreamd.trainers.anchors import base_anchors
from dreamd.trainers.checkpoints.manifest import CheckpointError
from dreamd.trainers.checkpoints.pointers import BASE, read_pointer, set_pointer
from dreamd.trainers.checkpoints.weights import load_as
from dreamd.trainers.gate.metrics import base_reference, evaluate
from dreamd.trainers.gate.rules import Decision, decide, forgetting_per_slice
from dreamd.trainers.model_store import resolve_model_dir

log = structlog.get_logger(__name__)

Embed = Callable[[list[str]], np.ndarray]
BRIEF_METRICS = ("probe_loss", "probe_accuracy", "kl_to_base", "acquisition_loss", "acquisition_recall",
                 "retention_loss", "retention_recall", "heldout_loss")


class Evaluator:
    """Evaluations against one suite: the base's are computed once, others cached by suite key."""

    def __init__(self, config: Config, layout: StateLayout, db: Database, embed: Embed):
        self.config, self.layout, self.db, self.embed = config, layout, db, embed
        base = load_as(config.model, layout.models, layout, BASE)
        anchors = base_anchors(resolve_model_dir(config.model, layout.models), layout.models, lambda: base)
        self.suite, self.key = build_suite(db, config.evaluation, anchors)
        cached = self._stored(BASE)
        if cached is None:
            started = time.monotonic()
            metrics, fingerprint = evaluate(base, self.suite, embed, None, general=self._stored_general(BASE))
            record(db, BASE, "base", self.key, metrics, fingerprint, "baseline", [], time.monotonic() - started)
            cached = (metrics, fingerprint)
        self.base = base_reference(base, self.suite, embed, *cached)

    def _stored(self, checkpoint: str) -> tuple[dict[str, Any], np.ndarray] | None:
        return stored(self.db, checkpoint, self.key, len(self.suite.fingerprint_prompts))

    def _stored_general(self, checkpoint: str) -> tuple[dict[str, Any], np.ndarray] | None:
        return stored_general(self.db, checkpoint, self.suite.general_key(), len(self.suite.fingerprint_prompts))

    def metrics_of(self, checkpoint: str, fresh: bool = False,
                   previous: np.ndarray | None = None) -> tuple[dict[str, Any], np.ndarray, float]:
        """(metrics, fingerprint, seconds) of a checkpoint on this suite; seconds is 0 when they
        came from the store. `fresh`: measure everything again. Raises CheckpointError when the
        checkpoint does not verify."""
        if checkpoint == BASE:
            return self.base.metrics, self.base.fingerprint, 0.0
        cached = None if fresh else self._stored(checkpoint)
        if cached is not None:
            return cached[0], cached[1], 0.0
        started = time.monotonic()
        general = None if fresh else self._stored_general(checkpoint)
        loaded = load_as(self.config.model, self.layout.models, self.layout, checkpoint)
        metrics, fingerprint = evaluate(loaded, self.suite, self.embed, self.base, previous, general)
        return metrics, fingerprint, time.monotonic() - started


@dataclass
class Judgement:
    """A candidate's evaluation and the gate's decision on it, not yet acted on."""

    candidate: str
    compared_to: str
    suite_key: str
    metrics: dict[str, Any]
    fingerprint: np.ndarray
    decision: Decision
    eval_seconds: float

    @property
    def outcome(self) -> str:
        return "promoted" if self.decision.promote else "rejected"


def judge_candidate(config: Config, layout: StateLayout, db: Database, candidate: str, embed: Embed) -> Judgement:
    """Evaluate `candidate` against the current model and the base; decide, but move nothing."""
    evaluator = Evaluator(config, layout, db, embed)
    current = read_pointer(layout, "current")
    current_metrics, current_fingerprint, seconds = evaluator.metrics_of(current)
    if seconds:  # the current model had not been evaluated on this suite yet
        record(db, current, "reference", evaluator.key, current_metrics, current_fingerprint, "reference", [], seconds)
    metrics, fingerprint, eval_seconds = evaluator.metrics_of(candidate, fresh=True, previous=current_fingerprint)
    metrics["forgetting"] = forgetting_per_slice(promoted_history(db), metrics["slice_losses"])
    decision = decide(metrics, current_metrics, evaluator.base.metrics, config.gate)
    return Judgement(candidate, current, evaluator.key, metrics, fingerprint, decision, eval_seconds)


def apply_judgement(layout: StateLayout, db: Database, judgement: Judgement) -> dict[str, Any]:
    """Promote (`current` and `last_good` move to the candidate) or reject; record it either way."""
    before = read_pointers(layout)
    if judgement.decision.promote:
        set_pointer(layout, "current", judgement.candidate)
        set_pointer(layout, "last_good", judgement.candidate)
    record(db, judgement.candidate, "candidate", judgement.suite_key, judgement.metrics, judgement.fingerprint,
           judgement.outcome, judgement.decision.reasons, judgement.eval_seconds, compared_to=judgement.compared_to)
    record_pointer_moves(db, before, read_pointers(layout), PROMOTED, "gate")  # a rejection moved nothing: no row
    log.info("gate decision", checkpoint=judgement.candidate, decision=judgement.outcome,
             reasons=judgement.decision.reasons, compared_to=judgement.compared_to,
             eval_seconds=round(judgement.eval_seconds, 1), metrics=brief(judgement.metrics))
    return {"checkpoint": judgement.candidate, "decision": judgement.outcome, "reasons": judgement.decision.reasons,
            "compared_to": judgement.compared_to, "metrics": judgement.metrics,
            "eval_seconds": round(judgement.eval_seconds, 2)}


def recheck_current(config: Config, layout: StateLayout, db: Database, embed: Embed) -> dict[str, Any]:
    """Re-evaluate `current`; if it fails the gate, roll back to `last_good` (or to the base
    when `current` is `last_good`). Against `last_good` the per-round tolerances apply; a current
    that is `last_good` is held to the budgets against the base only."""
    current, last_good = read_pointer(layout, "current"), read_pointer(layout, "last_good")
    if current == BASE:
        return {"checkpoint": BASE, "decision": "kept", "reasons": ["the base model is always acceptable"]}
    fallback = last_good if current != last_good else BASE
    evaluator = Evaluator(config, layout, db, embed)
    try:
        metrics, fingerprint, seconds = evaluator.metrics_of(current, fresh=True)
    except CheckpointError as exc:  # damaged on disk: nothing to evaluate, go back at once
        rollback_and_record(layout, fallback, by="recheck", why=ROLLED_BACK, db=db)
        log.error("current checkpoint does not verify; rolled back", checkpoint=current, rolled_back_to=fallback,
                  error=str(exc))
        return {"checkpoint": current, "decision": "rolled_back", "rolled_back_to": fallback, "reasons": [str(exc)]}
    reference = None if current == last_good else evaluator.metrics_of(last_good)[0]
    decision = decide(metrics, reference, evaluator.base.metrics, config.gate)
    outcome, target = "kept", None
    if not decision.promote:
        rollback_and_record(layout, fallback, by="recheck", why=ROLLED_BACK, db=db)
        outcome, target = "rolled_back", fallback
    record(db, current, "recheck", evaluator.key, metrics, fingerprint, outcome, decision.reasons, seconds,
           compared_to=last_good if reference is not None else BASE)
    log.info("re-evaluated current", checkpoint=current, decision=outcome, rolled_back_to=target,
             reasons=decision.reasons)
    return {"checkpoint": current, "decision": outcome, "rolled_back_to": target, "reasons": decision.reasons,
            "metrics": metrics}


def brief(metrics: dict[str, Any]) -> dict[str, float]:
    """The headline numbers of an evaluation, rounded, for the log."""
    return {k: round(metrics[k], 4) for k in BRIEF_METRICS if isinstance(metrics.get(k), float)}
