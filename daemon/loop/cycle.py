"""One dream cycle, top to bottom: `run_cycle`. And the re-evaluation job beside it: `reevaluate`.

Both run in the daemon's child process (loop/__init__.py; `dreamctl experiment` and the tests
call run_cycle in their own process). A cycle:

    dreams    questions drawn from clusters of memories (collisions in the graph), answered by the
              current model with the memories as notes (the teacher); the signal agent keeps the
              answers the memories support; every dream is stored with its provenance
    training  accepted dreams *without* their notes + replayed real exchanges (never held-out ones)
              + the anchor share (the base's answers to general prompts) -> one context-frozen
              round from `current` -> a candidate checkpoint; the round is recorded
    gate      damage (general probes, anchor KL), learning (reworded questions about the new
              memories) and retention (about older ones), against `current` and the base -> a decision
    promote   `current` and `last_good` move to the candidate, or it is rejected; recorded either way

It stops early, with a reason, when there are no collisions to dream from, no dream was accepted, or
there is nothing to train on. A step that fails raises: the child reports the error, and since the
pointers move only in the promote step, the current model is untouched.

The result, which the daemon keeps as `last_cycle` and `dreamctl dream --now`, the demo and the
experiment read: `{"outcome", "gate", "steps": {"dreams", "training", "gate", "promote"}}` for a
cycle that reached the gate; `{"outcome", "stopped_at", "steps"}` (the steps run so far) otherwise.
"""

from __future__ import annotations

import time
from contextlib import closing
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from dreamd.daemon.config import Config, config_from_dict
from dreamd.daemon.dreaming.batch import dream_batch, load_judge, summary
from dreamd.daemon.dreaming.dreams import Dream
from dreamd.daemon.dreaming.training_set import mark_trained, training_set
from dreamd.daemon.gate.history import record_training_round
from dreamd.daemon.gate.judge import apply_judgement, judge_candidate, recheck_current
from dreamd.daemon.gate.suite import held_out_nodes
from dreamd.daemon.service.child import report_progress
from dreamd.daemon.service.state_dir import StateLayout
from dreamd.memory_graph.database.store import open_store
from dreamd.memory_graph.embedder import Embedder
from dreamd.memory_graph.graph import MemoryGraph
from dreamd.trainers.anchors import Anchor, NeighbourCache, base_anchors
from dreamd.trainers.checkpoints.pointers import read_pointer
from dreamd.trainers.checkpoints.weights import load_as
from dreamd.trainers.examples import TrainingExample
from dreamd.trainers.model_store import load_model, resolve_model_dir
from dreamd.trainers.round import train_round

NO_COLLISIONS = "no collisions to dream from (too few memories)"
NOTHING_TO_TRAIN = "nothing to train on"


def run_cycle(config: dict[str, Any], state_root: str, seed: int | None = None) -> dict[str, Any]:
    """One dream cycle; returns its outcome and each step's result. `seed` fixes the cycle's seed
    (collisions, generation, replay) so a run repeats; the daemon leaves it to the clock."""
    settings = config_from_dict(config)
    layout = StateLayout(Path(state_root)).ensure()
    seed = int(time.time()) if seed is None else seed
    embedder = Embedder(settings.embedder)
    steps: dict[str, dict[str, Any]] = {}
    with closing(open_store(layout.database)) as db:
        current = read_pointer(layout, "current")
        held_out = frozenset(held_out_nodes(db, settings.evaluation.heldout_percent))
        started = time.monotonic()
        batch = dream_with(settings, layout, db, embedder, current, seed, held_out)
        if not batch:
            steps["dreams"] = {"stop": True, "outcome": NO_COLLISIONS, "dreams": 0}
            return stopped_at("dreams", steps)
        steps["dreams"] = {**summary(batch), "model": current, "seed": seed,  # outcome: "no dream accepted"
                           "seconds": round(time.monotonic() - started, 1)}
        if not any(dream.accepted for dream in batch):
            return stopped_at("dreams", steps)

        examples = training_examples(settings, layout, db, seed, held_out)
        if not examples:
            steps["training"] = {"stop": True, "outcome": NOTHING_TO_TRAIN, "examples": 0}
            return stopped_at("training", steps)
        steps["training"] = train_candidate(settings, layout, db, examples)

        started = time.monotonic()
        judgement = judge_candidate(settings, layout, db, steps["training"]["candidate"], embedder.encode)
        steps["gate"] = {"checkpoint": judgement.candidate, "decision": judgement.outcome,
                         "failed": judgement.decision.failed, "reasons": judgement.decision.reasons,
                         "compared_to": judgement.compared_to, "eval_seconds": round(judgement.eval_seconds, 2),
                         "seconds": round(time.monotonic() - started, 1)}
        applied = apply_judgement(layout, db, judgement)
        # Only now are the dreams spent: a cycle stopped before the gate decided leaves them for the next.
        mark_trained(db, examples, judgement.candidate)
        steps["promote"] = {"outcome": applied["decision"], "current": read_pointer(layout, "current"),
                            "last_good": read_pointer(layout, "last_good")}
    return {"outcome": steps["promote"]["outcome"], "gate": steps["gate"], "steps": steps}


def reevaluate(config: dict[str, Any], state_root: str) -> dict[str, Any]:
    """The re-evaluation job: re-check `current`, rolling back on its own if it fails the gate."""
    settings = config_from_dict(config)
    layout = StateLayout(Path(state_root)).ensure()
    with closing(open_store(layout.database)) as db:
        return recheck_current(settings, layout, db, Embedder(settings.embedder).encode)


def stopped_at(step: str, steps: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The result of a cycle that ended early at `step` (whose result says why)."""
    return {"outcome": steps[step].get("outcome", "stopped"), "stopped_at": step, "steps": steps}


def dream_with(settings: Config, layout: StateLayout, db: Database, embedder: Embedder, checkpoint: str,
               seed: int, held_out: frozenset[int] = frozenset()) -> list[Dream]:
    """Collisions -> dreams -> the signal agent's decisions, all stored; empty without collisions.
    The dreaming model (and the judge) are loaded here and freed on return, before training
    loads its own copy. Held-out memories are never a dream's notes or question."""
    loaded = load_as(settings.model, layout.models, layout, checkpoint)
    judge = load_judge(settings.signal, settings.model, layout.models)
    return dream_batch(db, MemoryGraph.load(db), loaded, embedder, dreams=settings.dreams, signal=settings.signal,
                       graph_settings=settings.graph, seed=seed, judge=judge, exclude=held_out)


def anchors_of(settings: Config, layout: StateLayout) -> list[Anchor]:
    """The anchor bank with the base model's answers (generated once per base, then cached)."""
    if settings.dreams.anchor_fraction == 0:
        return []
    model_dir = resolve_model_dir(settings.model, layout.models)
    return base_anchors(model_dir, layout.models, lambda: load_model(settings.model, layout.models))


def neighbour_cache(settings: Config, layout: StateLayout) -> NeighbourCache:
    """The base model's answers to neighbourhood prompts (answered once each, then cached)."""
    return NeighbourCache(resolve_model_dir(settings.model, layout.models), layout.models,
                          lambda: load_model(settings.model, layout.models))


def training_examples(settings: Config, layout: StateLayout, db: Database, seed: int,
                      held_out: frozenset[int]) -> list[TrainingExample]:
    """The round's examples: untrained accepted dreams, replayed exchanges (never a held-out one:
    the gate measures on those) and the anchor share (neighbourhood rehearsals and the bank)."""
    neighbours = neighbour_cache(settings, layout).answers if settings.dreams.neighbour_share else None
    return training_set(db, settings.dreams, seed, exclude_nodes=held_out, anchors=anchors_of(settings, layout),
                        neighbours=neighbours)


def train_candidate(settings: Config, layout: StateLayout, db: Database,
                    examples: list[TrainingExample]) -> dict[str, Any]:
    """One context-frozen round from `current` -> a candidate checkpoint. The round (with its loss
    per step) is recorded for `dreamctl report`; returns the training step's result."""

    parent = read_pointer(layout, "current")
    losses: list[float] = []

    def on_step(index: int, loss: float) -> None:
        losses.append(loss)
        report_progress(f"training step {index}")  # a long round that logs nothing is not a hung one

    started = time.time()
    candidate = train_round(load_model(settings.model, layout.models), examples, settings.training, layout,
                            parent_id=parent, on_step=lambda index, result: on_step(index, result.loss))
    dream_examples = sum(e.id.startswith("dream:") for e in examples)
    anchor_examples = sum(e.id.startswith("anchor:") for e in examples)
    neighbour_examples = sum(e.id.startswith("neighbour:") for e in examples)
    record_training_round(db, checkpoint=candidate, parent=parent, mode=settings.training.mode, started_at=started,
                          finished_at=time.time(), examples=len(examples), dream_examples=dream_examples,
                          losses=losses)
    return {"candidate": candidate, "parent": parent, "examples": len(examples), "dream_examples": dream_examples,
            "anchor_examples": anchor_examples, "neighbour_examples": neighbour_examples,
            "example_ids": [e.id for e in examples],
            "seconds": round(time.time() - started, 1),
            "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None}
