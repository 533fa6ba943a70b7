"""The evaluation suite's measurements, on the tiny model (the real model is in the integration tests)."""

import copy

import numpy as np
import pytest
import torch

from dreamd.trainers.gate.metrics import EvalSuite, ask, base_reference, evaluate, load_probes, response_losses
from dreamd.trainers.model_store import LoadedModel
from tests.helpers.tiny import tiny_llama, tiny_tokenizer


def fake_embed(texts):
    """A deterministic stand-in for the sentence embedder: character histograms, unit length."""
    vectors = np.array([[t.count(c) for c in "abcdefghijklmnopqrstuvwxyz "] for t in texts], dtype=np.float32) + 1e-3
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture
def tiny():
    tokenizer = tiny_tokenizer()
    return LoadedModel(model=tiny_llama(), tokenizer=tokenizer, directory=None)


@pytest.fixture
def suite():
    exchanges = [ask(f"question {i}?", f"answer number {i}.") for i in range(6)]
    return EvalSuite(heldout_slices={"old": exchanges[:3], "new": exchanges[3:]}, acquisition=exchanges[:2],
                     fingerprint_prompts=["hello", "tell me a story"], max_new_tokens=6)


def test_probes_ship_with_the_package():
    probes = load_probes()
    assert len(probes) >= 16 and {"factual", "arithmetic", "instruction", "refusal"} <= {p.kind for p in probes}
    assert all(p.accept for p in probes)


def test_batched_losses_equal_one_by_one(tiny):
    exchanges = [ask("a", "short"), ask("a much longer question", "and a longer answer too")]
    batched = response_losses(tiny, exchanges, batch_size=2)
    single = [response_losses(tiny, [ex], batch_size=1)[0] for ex in exchanges]
    assert batched == pytest.approx(single, abs=1e-5)


def test_base_against_itself_has_zero_kl_and_identical_fingerprint(tiny, suite):
    base = base_reference(tiny, suite, fake_embed)
    metrics, _ = evaluate(tiny, suite, fake_embed, base)
    assert metrics["kl_to_base"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["fingerprint_to_base"] == pytest.approx(1.0, abs=1e-5)


def test_metrics_are_reproducible(tiny, suite):
    base = base_reference(tiny, suite, fake_embed)
    first, _ = evaluate(tiny, suite, fake_embed, base)
    second, _ = evaluate(tiny, suite, fake_embed, base)
    assert first == second


def test_kl_grows_with_a_larger_update(tiny, suite):
    base = base_reference(tiny, suite, fake_embed)
    kls = []
    for scale in (0.01, 0.1):
        moved = LoadedModel(copy.deepcopy(tiny.model), tiny.tokenizer, None)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in moved.model.parameters():
                p.add_(torch.randn(p.shape, generator=generator) * scale)
        kls.append(evaluate(moved, suite, fake_embed, base)[0]["kl_to_base"])
    assert 0 < kls[0] < kls[1]
