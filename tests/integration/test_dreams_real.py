"""Dreams on the real default model: the divergence scorer goes the right way, and a small batch
runs end to end (compose, play out, every scorer, storage) with provenance for what it accepts."""

from __future__ import annotations

import pytest

from dreamd.daemon.dreaming.batch import dream_batch
from dreamd.daemon.dreaming.dreams import Dream
from dreamd.daemon.dreaming.records import load_dream
from dreamd.daemon.dreaming.settings import DreamSettings, SignalSettings
from dreamd.daemon.dreaming.signal_agent import divergences
from dreamd.memory_graph.embedder import Embedder
from dreamd.memory_graph.settings import EmbedderSettings
from dreamd.trainers.model_store import load_model
from dreamd.trainers.settings import ModelSettings
from tests.helpers.dreams import GRAPH, sample_graph

pytestmark = pytest.mark.real_model

QUESTION = "What is the name of our team's build server?"
ANSWER = "Our build server is called Marlowe-7, and it runs in the basement rack."
HOLDS_ANSWER = f"User: {QUESTION}\nAssistant: {ANSWER}"
UNRELATED = "User: How do I keep basil fresh?\nAssistant: Put the stems in a glass of water, out of the fridge."


@pytest.fixture(scope="module")
def loaded(models_dir):
    return load_model(ModelSettings(device="cpu"), models_dir)


def test_a_memory_holding_the_answer_raises_the_with_memory_log_prob(loaded):
    dreams = [Dream([1, 2], [[1, 2]], fragments, 0.0, scenario=QUESTION, response=ANSWER)
              for fragments in ([HOLDS_ANSWER], [UNRELATED], [UNRELATED, HOLDS_ANSWER])]
    holds, unrelated, mixed = divergences(loaded, dreams)
    # An invented name is unlikely from the weights alone and near-certain once it is in context.
    assert holds > 1.0, holds
    assert abs(unrelated) < holds / 3, (holds, unrelated)
    assert mixed > 1.0, mixed  # found among other memories too


def test_a_small_batch_of_real_dreams_end_to_end(loaded, tmp_path):
    embedder = Embedder(EmbedderSettings())
    world = sample_graph(tmp_path / "state", embedder)
    try:
        settings = DreamSettings(per_cycle=3, batch_size=3, scenario_tokens=24, response_tokens=24)
        batch = dream_batch(world.db, world.graph, loaded, embedder, dreams=settings, signal=SignalSettings(),
                            graph_settings=GRAPH, seed=3)
        assert len(batch) == 3
        for dream in batch:
            stored = load_dream(world.db, dream.id)
            assert stored["reasons"], "every decision carries its reasons"
            assert "Fragments of earlier conversations" not in stored["scenario"]
            assert stored["kind"] in ("logged", "reworded", "about", "join")
            if stored["failure"] is None and stored["scores"]:
                assert set(stored["scores"]) == {
                    "divergence", "grounding", "agreement", "hygiene", "novelty"}  # no judge model
            if stored["accepted"]:
                assert stored["scenario"] and stored["response"] and stored["node_ids"] and stored["walk"]
                if stored["target"] == "teacher":  # the teacher's answer passed every check
                    assert all(s["passed"] for s in stored["scores"].values())
                else:  # its teacher answer failed: the memory's own logged answer is the target
                    assert stored["target"] == "logged" and stored["reasons"][0].startswith("replay:")
    finally:
        world.db.close()
