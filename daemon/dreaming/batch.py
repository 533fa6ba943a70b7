"""One batch of dreams, scored and stored (`dream_batch`), the judge model, and the batch's summary.

    batch = dream_batch(db, graph, loaded, embedder, dreams=..., signal=..., graph_settings=..., seed=...)
    summary(batch)  # the dreams step's result in the cycle's report

loop/cycle.py calls these in the cycle's child process (generation is long work).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import structlog
from sqlite_utils import Database

from dreamd.daemon.dreaming.dreams import Dream, dream
from dreamd.daemon.dreaming.records import prior_vectors, save_dreams, untrained_memories
from dreamd.daemon.dreaming.settings import DreamSettings, SignalSettings
from dreamd.daemon.dreaming.signal_agent import ScoringContext, score_dreams
from dreamd.memory_graph.graph import MemoryGraph
from dreamd.memory_graph.settings import GraphSettings
from dreamd.trainers.model_store import LoadedModel, load_model
from dreamd.trainers.settings import ModelSettings

log = structlog.get_logger(__name__)


def load_judge(signal: SignalSettings, model: ModelSettings, models_dir: Path) -> LoadedModel | None:
    """The configured judge model, or None: the dreaming model judges."""
    if "judge" not in signal.weights():
        return None
    return load_model(ModelSettings(path=signal.judge_model_path, device=model.device, dtype=model.dtype), models_dir)


def dream_batch(db: Database, graph: MemoryGraph, loaded: LoadedModel, embedder, *, dreams: DreamSettings,
                signal: SignalSettings, graph_settings: GraphSettings, seed: int,
                judge: LoadedModel | None = None, scorers=None, exclude: frozenset[int] = frozenset()) -> list[Dream]:
    """Draw collisions, dream one per collision, score, decide and store every dream (accepted
    or not, with its provenance). Returns the dreams, ids set. Memories in `exclude` (held out for
    the gate) are never a dream's notes or question."""
    started = time.monotonic()
    seed = seed + dreams.seed
    graph.refresh(db)
    collisions = graph.collisions(db, dreams.per_cycle, seed=seed, settings=graph_settings,
                                  prefer=untrained_memories(db), prefer_share=dreams.fresh_share)
    if not collisions:
        log.info("no collisions to dream from", nodes=len(graph.ids))
        return []
    batch = dream(db, loaded, collisions, dreams, seed, exclude=exclude)
    context = ScoringContext(signal, loaded=loaded, judge=judge, embed=getattr(embedder, "encode", embedder),
                             prior_vectors=prior_vectors(db), teacher_top_k=dreams.teacher_top_k)
    score_dreams(batch, context, scorers)
    save_dreams(db, batch, batch=uuid.uuid4().hex[:12], model=str(loaded.directory), seed=seed, review=dreams.review)
    accepted = sum(d.accepted for d in batch)
    log.info("dreams scored and stored", dreams=len(batch), accepted=accepted,
             failed=sum(d.failure is not None for d in batch), seconds=round(time.monotonic() - started, 1))
    return batch


def summary(batch: list[Dream]) -> dict:
    """The dreams step's result for the cycle report (JSON): counts, ids, rejection reasons, and
    `stop` / `outcome` ("no dream accepted") when nothing is left to train on."""
    reasons: dict[str, int] = {}
    for d in batch:
        if not d.accepted:
            key = d.reasons[0].split(" (")[0] if d.reasons else "unknown"
            reasons[key] = reasons.get(key, 0) + 1
    by_kind: dict[str, int] = {}
    for d in batch:
        if d.accepted:
            by_kind[d.kind] = by_kind.get(d.kind, 0) + 1
    return {"dreams": len(batch), "accepted": sum(d.accepted for d in batch), "accepted_by_kind": by_kind,
            "logged_targets": sum(d.accepted and d.target == "logged" for d in batch),
            "failed": sum(d.failure is not None for d in batch), "dream_ids": [d.id for d in batch],
            "rejections": reasons, "stop": not any(d.accepted for d in batch),
            "outcome": "no dream accepted" if not any(d.accepted for d in batch) else None}
