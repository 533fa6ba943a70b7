"""The quality gate in the loop: evaluate a candidate, decide, move the pointers, record why.

The rules live in trainers/gate.py (pure) and the measurements in trainers/evaluate.py; this
module feeds them from the database and the checkpoints, and writes the outcome:

- the evaluation suite is built from the memory graph: held-out exchanges (chosen by content hash,
  so fixed at ingest and never trained on) in time slices, recent exchanges asked again in other
  words, and the shipped probes;
- the suite has a key (a hash of what is in it); the base's and the current model's metrics are
  cached per key, since the same weights on the same suite give the same numbers;
- `gate_candidate` promotes (`current` and `last_good` move) only on a passing decision;
- `recheck_current` re-evaluates `current` and rolls back to `last_good` (or the base) on failure.

Every evaluation is stored in the `evaluations` table with its decision and reasons.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass

import numpy as np
from sqlite_utils import Database

from dreamd.daemon.config import Config
from dreamd.trainers.checkpoints.weights import load_as
import structlog
from dreamd.daemon.service.state_dir import StateLayout
from dreamd.daemon.dreaming.training_set import replay_example
from dreamd.memory_graph.database.store import blob_vector, vector_blob, write
from dreamd.trainers.checkpoints.manifest import CheckpointError
from dreamd.trainers.gate.rules import Decision, EvalSettings, decide, forgetting_per_slice
from dreamd.trainers.checkpoints.pointers import BASE, read_pointer, set_pointer

log = structlog.get_logger(__name__)

STOPWORDS = frozenset(
    "about after again also been before being could does doing from have here into just like make more most "
    "much need only other over same should some such than that their them then there these they this those "
    "very want were what when where which while will with would your yours please thanks thank".split()
)


# --- the suite, from the database ------------------------------------------------------------

def is_held_out(message_sha256: str, percent: int) -> bool:
    """Held out by content: the same exchange is held out on every machine, in every round."""
    return int(message_sha256[:8], 16) % 100 < percent


def held_out_nodes(db: Database, percent: int) -> list[int]:
    rows = db.execute(
        "SELECT n.id, m.sha256 FROM memory_nodes n JOIN messages m ON m.id = n.first_message_id ORDER BY n.id"
    ).fetchall()
    return [node for node, sha in rows if is_held_out(sha, percent)]


def _spread(count: int, wanted: int) -> list[int]:
    """`wanted` indices out of `count`, evenly spaced, the first and last always among them."""
    if count <= wanted:
        return list(range(count))
    return sorted({round(i * (count - 1) / (wanted - 1)) for i in range(wanted)}) if wanted > 1 else [count - 1]


def heldout_slices(db: Database, settings: EvalSettings) -> dict[str, list]:
    nodes = held_out_nodes(db, settings.heldout_percent)
    chunks = [nodes[i:i + settings.slice_size] for i in range(0, len(nodes), settings.slice_size)]
    slices = {}
    for index in _spread(len(chunks), settings.max_slices):
        examples = [replay_example(db, node, settings.history_messages) for node in chunks[index]]
        slices[f"slice-{index:03d}"] = [e for e in examples if e is not None]
    return {name: examples for name, examples in slices.items() if examples}


def reworded(example):
    """The exchange asked again in other words: its answer after a question made of its keywords."""
    from dreamd.trainers.gate.metrics import ask

    question = next(m["content"] for m in reversed(example.messages) if m["role"] == "user")
    words = []
    for word in re.findall(r"[A-Za-z][A-Za-z0-9'-]{3,}", question):
        if word.lower() not in STOPWORDS and word.lower() not in (w.lower() for w in words):
            words.append(word)
    keywords = sorted(words, key=len, reverse=True)[:5]
    return ask(f"Remind me what you told me about {', '.join(keywords) or 'that'}.", example.messages[-1]["content"],
               example.id.replace("replay:", "acquire:"))


def acquisition_examples(db: Database, settings: EvalSettings, held_out: set[int]) -> list:
    rows = db.execute("SELECT id FROM memory_nodes ORDER BY id DESC LIMIT ?",
                      (settings.acquisition_count * 2 + len(held_out),)).fetchall()
    out = []
    for (node,) in rows:
        if len(out) == settings.acquisition_count:
            break
        example = replay_example(db, node, 0) if node not in held_out else None
        if example is not None:
            out.append(reworded(example))
    return out


def build_suite(db: Database, settings: EvalSettings):
    """(suite, key): the key changes whenever anything in the suite does."""
    from dreamd.trainers.gate.metrics import EvalSuite

    held_out = set(held_out_nodes(db, settings.heldout_percent))
    suite = EvalSuite(
        heldout_slices=heldout_slices(db, settings),
        acquisition=acquisition_examples(db, settings, held_out),
        max_new_tokens=settings.max_new_tokens,
    )
    described = {
        "slices": {name: [e.id for e in exs] for name, exs in suite.heldout_slices.items()},
        "acquisition": [e.id for e in suite.acquisition],
        "probes": [p.id for p in suite.probes],
        "fingerprint": suite.fingerprint_prompts,
        "max_new_tokens": suite.max_new_tokens,
    }
    return suite, hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]


# --- stored evaluations ----------------------------------------------------------------------

def stored(db: Database, checkpoint: str, suite_key: str, prompts: int):
    """A stored (metrics, fingerprint) of this checkpoint on this suite; the fingerprint has one
    row per fingerprint prompt."""
    row = db.execute(
        "SELECT metrics, fingerprint FROM evaluations WHERE checkpoint = ? AND suite_key = ? ORDER BY id DESC LIMIT 1",
        (checkpoint, suite_key)).fetchone()
    return (json.loads(row[0]), blob_vector(row[1]).reshape(prompts, -1)) if row else None


def record(db: Database, checkpoint: str, purpose: str, suite_key: str, metrics: dict, fingerprint,
           decision: str, reasons: list[str], seconds: float, compared_to: str | None = None) -> None:
    with write(db):
        db.execute(
            "INSERT INTO evaluations (checkpoint, purpose, suite_key, evaluated_at, seconds, metrics, fingerprint, "
            "decision, reasons, compared_to) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (checkpoint, purpose, suite_key, time.time(), seconds, json.dumps(metrics),
             vector_blob(np.asarray(fingerprint, dtype=np.float32).ravel()), decision, json.dumps(reasons),
             compared_to))


def promoted_history(db: Database) -> list[dict]:
    """Slice losses of the base and every promoted checkpoint, oldest first."""
    rows = db.execute(
        "SELECT metrics FROM evaluations WHERE decision IN ('promoted', 'baseline') ORDER BY id").fetchall()
    return [json.loads(m).get("slice_losses", {}) for (m,) in rows]


# --- models ----------------------------------------------------------------------------------

class Evaluator:
    """Evaluations against one suite: the base's are computed once, others cached by suite key."""

    def __init__(self, config: Config, layout: StateLayout, db: Database, embed):
        from dreamd.trainers.gate.metrics import BaseReference, evaluate, next_token_logprobs

        self.config, self.layout, self.db, self.embed = config, layout, db, embed
        self.suite, self.key = build_suite(db, config.evaluation)
        base = load_as(config.model, layout.models, layout, BASE)
        cached = self._stored(BASE)
        if cached is None:
            started = time.monotonic()
            metrics, fingerprint = evaluate(base, self.suite, embed, None)
            record(db, BASE, "base", self.key, metrics, fingerprint, "baseline", [], time.monotonic() - started)
            cached = (metrics, fingerprint)
        self.base = BaseReference(next_token_logprobs(base, self.suite.probe_exchanges()), cached[1], cached[0])
        self._evaluate = evaluate

    def _stored(self, checkpoint: str):
        return stored(self.db, checkpoint, self.key, len(self.suite.fingerprint_prompts))

    def metrics_of(self, checkpoint: str, fresh: bool = False, previous=None):
        """(metrics, fingerprint, seconds) of a checkpoint on this suite."""
        if checkpoint == BASE:
            return self.base.metrics, self.base.fingerprint, 0.0
        cached = None if fresh else self._stored(checkpoint)
        if cached is not None:
            return cached[0], cached[1], 0.0
        started = time.monotonic()
        loaded = load_as(self.config.model, self.layout.models, self.layout, checkpoint)
        metrics, fingerprint = self._evaluate(loaded, self.suite, self.embed, self.base, previous)
        return metrics, fingerprint, time.monotonic() - started


# --- the two entry points --------------------------------------------------------------------

@dataclass
class Judgement:
    """A candidate's evaluation and the gate's decision on it, not yet acted on."""

    candidate: str
    compared_to: str
    suite_key: str
    metrics: dict
    fingerprint: np.ndarray
    decision: Decision
    eval_seconds: float

    @property
    def outcome(self) -> str:
        return "promoted" if self.decision.promote else "rejected"


def judge_candidate(config: Config, layout: StateLayout, db: Database, candidate: str, embed) -> Judgement:
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


def apply_judgement(layout: StateLayout, db: Database, judgement: Judgement) -> dict:
    """Promote (`current` and `last_good` move to the candidate) or reject; record it either way."""
    from dreamd.daemon.gate.history import PROMOTED, read_pointers, record_pointer_moves

    before = read_pointers(layout)
    if judgement.decision.promote:
        set_pointer(layout, "current", judgement.candidate)
        set_pointer(layout, "last_good", judgement.candidate)
    record(db, judgement.candidate, "candidate", judgement.suite_key, judgement.metrics, judgement.fingerprint,
           judgement.outcome, judgement.decision.reasons, judgement.eval_seconds, compared_to=judgement.compared_to)
    record_pointer_moves(db, before, read_pointers(layout), PROMOTED, "gate")  # a rejection moved nothing: no row
    log.info("gate decision", checkpoint=judgement.candidate, decision=judgement.outcome,
             reasons=judgement.decision.reasons, compared_to=judgement.compared_to,
             eval_seconds=round(judgement.eval_seconds, 1), metrics=_brief(judgement.metrics))
    return {"checkpoint": judgement.candidate, "decision": judgement.outcome, "reasons": judgement.decision.reasons,
            "compared_to": judgement.compared_to, "metrics": judgement.metrics,
            "eval_seconds": round(judgement.eval_seconds, 2)}


def gate_candidate(config: Config, layout: StateLayout, db: Database, candidate: str, embed) -> dict:
    """Evaluate `candidate`, promote it only if the gate passes, and record the decision."""
    return apply_judgement(layout, db, judge_candidate(config, layout, db, candidate, embed))


def recheck_current(config: Config, layout: StateLayout, db: Database, embed) -> dict:
    """Re-evaluate `current`; if it fails the gate, roll back to `last_good` (or to the base
    when `current` is `last_good`). Against `last_good` the per-round tolerances apply; a current
    that is `last_good` is held to the budgets against the base only."""
    from dreamd.daemon.gate.history import ROLLED_BACK, rollback_and_record

    current, last_good = read_pointer(layout, "current"), read_pointer(layout, "last_good")
    if current == BASE:
        return {"checkpoint": BASE, "decision": "kept", "reasons": ["the base model is always acceptable"]}
    evaluator = Evaluator(config, layout, db, embed)
    try:
        metrics, fingerprint, seconds = evaluator.metrics_of(current, fresh=True)
    except CheckpointError as exc:  # damaged on disk: nothing to evaluate, go back at once
        target = last_good if current != last_good else BASE
        rollback_and_record(layout, target, by="recheck", why=ROLLED_BACK, db=db)
        log.error("current checkpoint does not verify; rolled back", checkpoint=current, rolled_back_to=target,
                  error=str(exc))
        return {"checkpoint": current, "decision": "rolled_back", "rolled_back_to": target, "reasons": [str(exc)]}
    reference = None if current == last_good else evaluator.metrics_of(last_good)[0]
    decision = decide(metrics, reference, evaluator.base.metrics, config.gate)
    outcome, target = "kept", None
    if not decision.promote:
        target = last_good if current != last_good else BASE
        rollback_and_record(layout, target, by="recheck", why=ROLLED_BACK, db=db)
        outcome = "rolled_back"
    record(db, current, "recheck", evaluator.key, metrics, fingerprint, outcome, decision.reasons, seconds,
           compared_to=last_good if reference is not None else BASE)
    log.info("re-evaluated current", checkpoint=current, decision=outcome, rolled_back_to=target,
             reasons=decision.reasons)
    return {"checkpoint": current, "decision": outcome, "rolled_back_to": target, "reasons": decision.reasons,
            "metrics": metrics}


def last_decision(db: Database) -> dict | None:
    """The newest gate or re-check decision, for `dreamctl status`."""
    row = db.execute(
        "SELECT checkpoint, purpose, decision, reasons, evaluated_at FROM evaluations "
        "WHERE purpose IN ('candidate', 'recheck') ORDER BY id DESC LIMIT 1").fetchone()
    if row is None:
        return None
    return {"checkpoint": row[0], "purpose": row[1], "decision": row[2], "reasons": json.loads(row[3]),
            "at": row[4]}


def _brief(metrics: dict) -> dict:
    keys = ("heldout_loss", "probe_loss", "probe_accuracy", "kl_to_base", "fingerprint_to_base", "acquisition_loss")
    return {k: round(metrics[k], 4) for k in keys if isinstance(metrics.get(k), float)}
