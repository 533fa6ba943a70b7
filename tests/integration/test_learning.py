"""The loop learns, on the real default model: one cycle's dreams and training on the Zypher logs
raise the log-probability of its facts after held-out questions (never in any log), while KL to
the base on the anchor bank's answers stays within the gate's budget.

The gate is left out (the quality-gate tests cover it); this is the teacher/student step itself:
rehearsals played out with their memories, trained without them, the anchor share beside them.
"""

from __future__ import annotations

import shutil
from contextlib import closing

import pytest

from dreamd.daemon.config import config_from_dict
from dreamd.daemon.experiments.memory_formation.facts import heldout_probes, write_logs
from dreamd.daemon.experiments.memory_formation.measure import anchor_kl, value_logprobs
from dreamd.daemon.gate.suite import held_out_nodes
from dreamd.daemon.loop.cycle import anchors_of, dream_with, train_candidate, training_examples
from dreamd.daemon.service.state_dir import StateLayout
from dreamd.memory_graph.database.store import open_store
from dreamd.memory_graph.embedder import Embedder
from dreamd.memory_graph.ingest import Ingester
from dreamd.trainers.checkpoints.pointers import BASE
from dreamd.trainers.checkpoints.weights import load_as
from dreamd.trainers.model_store import EMBEDDED_NAME
from tests.helpers.anchors import share_anchors

pytestmark = pytest.mark.real_model


def test_one_cycle_raises_held_out_fact_logprob_and_keeps_anchor_kl_in_budget(models_dir, default_anchor_cache,
                                                                               tmp_path):
    layout = StateLayout(tmp_path / "state").ensure()
    shutil.copytree(models_dir / EMBEDDED_NAME, layout.models / EMBEDDED_NAME)
    share_anchors(default_anchor_cache, layout.root)
    config = config_from_dict({"model": {"device": "cpu"}, "dreams": {"per_cycle": 16}})
    embedder = Embedder(config.embedder)
    ingester = Ingester(layout.inbox, layout.database, embedder, config.inbox, config.graph)
    dropped = {ingester.inbox.drop(p).name for p in write_logs("Zypher", tmp_path / "logs")}
    assert ingester.drain(trusted=frozenset(dropped)).ingested == 3
    ingester.db.close()

    with closing(open_store(layout.database)) as db:
        held_out = frozenset(held_out_nodes(db, config.evaluation.heldout_percent))
        batch = dream_with(config, layout, db, embedder, BASE, seed=3, held_out=held_out)
        accepted = [d for d in batch if d.accepted]
        assert len(accepted) >= len(batch) // 2, [d.reasons for d in batch]
        assert all(d.kind == "join" or d.target == "logged" or d.response for d in accepted)
        examples = training_examples(config, layout, db, 3, held_out)
        assert any(e.id.startswith("anchor:") for e in examples)
        # Neighbourhood rehearsals: the dreams' questions about common things, at the base's answers.
        near = [e for e in examples if e.id.startswith("neighbour:")]
        assert near and all("Zypher" not in m["content"] for e in near for m in e.messages)
        assert all(e.soft is not None for e in near)
        assert not any(m["role"] == "system" for e in examples if e.id.startswith("dream:") for m in e.messages)
        candidate = train_candidate(config, layout, db, examples)["candidate"]

    probes = heldout_probes("Zypher")
    anchors = anchors_of(config, layout)
    base = load_as(config.model, layout.models, layout, BASE)
    before = sum(value_logprobs(base, probes)) / len(probes)
    del base
    trained = load_as(config.model, layout.models, layout, candidate)
    after = sum(value_logprobs(trained, probes)) / len(probes)
    kl = anchor_kl(trained, anchors)
    assert after > before + 1.0, (before, after)  # nats per value token, on questions never trained on
    assert kl <= config.gate.max_kl_to_base, kl
