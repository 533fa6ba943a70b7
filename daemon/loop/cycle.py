"""The dream cycle's steps, strung together by daemon/stages.py and run in one child process.

    dreams    collisions from the memory graph -> scenarios -> the current model's responses ->
              the signal agent's scores and decisions, every dream stored with its provenance
    training  accepted dreams + replayed real exchanges (never the held-out ones) -> one
              context-frozen APOLLO round from `current` -> a candidate checkpoint
    gate      the evaluation suite on the candidate, against `current` and the base -> a decision
    promote   `current` and `last_good` move to the candidate, or it is rejected; recorded either way

Each step takes the cycle context (the config as a dict, the state root and every earlier step's
result by name) and returns a JSON-able dict; `{"stop": True}` ends the cycle early (nothing
accepted, nothing to train on). A failing step raises: the child reports the error, and since
pointers move only in `promote`, the current model is untouched.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dreamd.daemon.config import Config, config_from_dict
from dreamd.daemon.service.state_dir import StateLayout

WORLD = "_world"  # where the context keeps what the steps share (not part of the cycle's report)


@dataclass
class World:
    config: Config
    layout: StateLayout
    db: Any
    embedder: Any
    seed: int
    examples: Any = None  # the round's training examples, marked as trained once the gate decided
    judgement: Any = None


def world(context: dict[str, Any]) -> World:
    if WORLD not in context:
        from dreamd.memory_graph.embedder import Embedder
        from dreamd.memory_graph.database.store import open_store

        config = config_from_dict(context["config"])
        layout = StateLayout(Path(context["state_root"])).ensure()
        context[WORLD] = World(config, layout, open_store(layout.database), Embedder(config.embedder),
                               seed=context.get("seed", int(time.time())))
    return context[WORLD]


def dreams(context: dict[str, Any]) -> dict[str, Any]:
    from dreamd.daemon.dreaming.batch import dream_batch, load_judge, summary
    from dreamd.trainers.checkpoints.weights import load_as
    from dreamd.memory_graph.graph import MemoryGraph
    from dreamd.trainers.checkpoints.pointers import read_pointer

    w = world(context)
    current = read_pointer(w.layout, "current")
    loaded = load_as(w.config.model, w.layout.models, w.layout, current)  # the model as it is now dreams
    batch = dream_batch(
        w.db, MemoryGraph.load(w.db), loaded, w.embedder, dreams=w.config.dreams, signal=w.config.signal,
        graph_settings=w.config.graph, seed=w.seed,
        judge=load_judge(w.config.signal, w.config.model, w.layout.models),
    )
    if not batch:
        return {"stop": True, "outcome": "no collisions to dream from (too few memories)", "dreams": 0}
    return {**summary(batch), "model": current, "seed": w.seed}


def training(context: dict[str, Any]) -> dict[str, Any]:
    from dreamd.daemon.gate.history import record_training_round
    from dreamd.daemon.gate.judge import held_out_nodes
    from dreamd.daemon.dreaming.training_set import training_set
    from dreamd.trainers.checkpoints.pointers import read_pointer
    from dreamd.trainers.model_store import load_model
    from dreamd.trainers.round import train_round

    w = world(context)
    held_out = frozenset(held_out_nodes(w.db, w.config.evaluation.heldout_percent))
    examples = training_set(w.db, w.config.dreams, w.seed, exclude_nodes=held_out)
    if not examples:
        return {"stop": True, "outcome": "nothing to train on", "examples": 0}
    parent = read_pointer(w.layout, "current")
    steps: list[float] = []
    started = time.time()
    candidate = train_round(load_model(w.config.model, w.layout.models), examples, w.config.training, w.layout,
                            parent_id=parent, on_step=lambda _i, result: steps.append(result.loss))
    w.examples = examples
    dream_examples = sum(e.id.startswith("dream:") for e in examples)
    record_training_round(w.db, checkpoint=candidate, parent=parent, mode=w.config.training.mode,
                          started_at=started, finished_at=time.time(), examples=len(examples),
                          dream_examples=dream_examples, losses=steps)  # for `dreamctl report`
    return {"candidate": candidate, "parent": parent, "examples": len(examples),
            "dream_examples": dream_examples,
            "first_loss": steps[0] if steps else None, "last_loss": steps[-1] if steps else None}


def gate(context: dict[str, Any]) -> dict[str, Any]:
    from dreamd.daemon.gate.judge import judge_candidate

    w = world(context)
    w.judgement = judge_candidate(w.config, w.layout, w.db, context["training"]["candidate"], w.embedder.encode)
    return {"checkpoint": w.judgement.candidate, "decision": w.judgement.outcome,
            "reasons": w.judgement.decision.reasons, "compared_to": w.judgement.compared_to,
            "eval_seconds": round(w.judgement.eval_seconds, 2)}


def promote(context: dict[str, Any]) -> dict[str, Any]:
    from dreamd.daemon.gate.judge import apply_judgement
    from dreamd.daemon.dreaming.training_set import mark_trained
    from dreamd.trainers.checkpoints.pointers import read_pointer

    w = world(context)
    applied = apply_judgement(w.layout, w.db, w.judgement)
    # Only now are the dreams spent: a cycle stopped before the gate decided leaves them for the next.
    mark_trained(w.db, w.examples, w.judgement.candidate)
    return {"outcome": applied["decision"], "current": read_pointer(w.layout, "current"),
            "last_good": read_pointer(w.layout, "last_good")}


def reevaluate(config: dict[str, Any], state_root: str) -> dict[str, Any]:
    """The re-evaluation job: re-check `current`, rolling back on its own if it fails the gate."""
    from dreamd.daemon.gate.judge import recheck_current

    w = world({"config": config, "state_root": state_root})
    return recheck_current(w.config, w.layout, w.db, w.embedder.encode)
