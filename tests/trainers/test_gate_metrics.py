"""The evaluation suite's measurements, on the tiny model (the real model is in the integration tests)."""

import copy
import dataclasses

import numpy as np
import pytest
import torch

from dreamd.trainers.examples import SoftTargets, TrainingExample, encode_example
from dreamd.trainers.gate import metrics as gate_metrics
from dreamd.trainers.gate.metrics import (
    GENERAL_METRICS,
    MAX_CONTEXT_TOKENS,
    EvalSuite,
    answer_kl,
    answer_logprobs,
    answer_top_k,
    ask,
    base_reference,
    evaluate,
    load_probes,
    mean_kl,
    recall,
    response_losses,
    top_k,
)
from dreamd.trainers.model_store import LoadedModel
from dreamd.trainers.words import recalled
from tests.helpers.tiny import tiny_llama, tiny_tokenizer


def fake_embed(texts):
    """A deterministic stand-in for the sentence embedder: character histograms, unit length."""
    vectors = np.array([[t.count(c) for c in "abcdefghijklmnopqrstuvwxyz "] for t in texts], dtype=np.float32) + 1e-3
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture
def tiny():
    tokenizer = tiny_tokenizer()
    return LoadedModel(model=tiny_llama(), tokenizer=tokenizer, directory=None)


ANCHORS = [ask("Why is the sky blue?", "Sunlight scatters off the air.", "anchor:a"),
           ask("Name a fruit.", "An apple.", "anchor:b")]


@pytest.fixture
def suite():
    exchanges = [ask(f"question {i}?", f"answer number {i}.") for i in range(6)]
    # A few probes of the shipped bank: the whole bank (200+) is minutes of generation on a CPU.
    return EvalSuite(heldout_slices={"old": exchanges[:3], "new": exchanges[3:]}, acquisition=exchanges[:2],
                     retention=exchanges[2:4], anchors=list(ANCHORS), probes=load_probes()[:6],
                     fingerprint_prompts=["hello", "tell me a story"], max_new_tokens=6)


def moved_copy(tiny, scale: float) -> LoadedModel:
    moved = LoadedModel(copy.deepcopy(tiny.model), tiny.tokenizer, None)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in moved.model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * scale)
    return moved


def test_probes_ship_with_the_package():
    probes = load_probes()
    assert len(probes) >= 200 and {"factual", "arithmetic", "instruction", "refusal"} <= {p.kind for p in probes}
    assert all(p.accept for p in probes)
    assert len({p.id for p in probes}) == len(probes)


def test_batched_losses_equal_one_by_one(tiny):
    exchanges = [ask("a", "short"), ask("a much longer question", "and a longer answer too")]
    batched = response_losses(tiny, exchanges, batch_size=2)
    single = [response_losses(tiny, [ex], batch_size=1)[0] for ex in exchanges]
    assert batched == pytest.approx(single, abs=1e-5)


def test_a_batchs_common_start_runs_once_and_scores_as_one_by_one(tiny, monkeypatch):
    """Exchanges that open alike (a shared system prompt) have that start run once for the batch."""
    from dreamd.trainers import decoder

    system = {"role": "system", "content": "You are a careful assistant who answers briefly and plainly."}
    exchanges = [TrainingExample(f"e{i}", [system, {"role": "user", "content": q}, {"role": "assistant", "content": a}])
                 for i, (q, a) in enumerate([("a", "short"), ("a much longer question", "and a longer answer too"),
                                             ("what?", "this")])]
    shared = []

    def spy(*args):
        length, cache = decoder.shared_prefix(*args)
        shared.append(length)
        return length, cache

    monkeypatch.setattr(gate_metrics, "shared_prefix", spy)
    batched = response_losses(tiny, exchanges, batch_size=3)
    assert shared[0] >= decoder.MIN_SHARED_PREFIX  # the system prompt ran once, apart
    single = [response_losses(tiny, [ex], batch_size=1)[0] for ex in exchanges]
    assert batched == pytest.approx(single, abs=1e-5)
    assert [len(rows) for rows in answer_logprobs(tiny, exchanges, batch_size=3)] == [
        len(encode_example(tiny.tokenizer, ex, MAX_CONTEXT_TOKENS).response_ids) for ex in exchanges]


def test_answer_logprobs_cover_the_answer_tokens_only(tiny):
    logprobs = answer_logprobs(tiny, ANCHORS)
    for exchange, rows in zip(ANCHORS, logprobs):
        encoded = encode_example(tiny.tokenizer, exchange, MAX_CONTEXT_TOKENS)
        assert rows.shape == (len(encoded.response_ids), len(tiny.tokenizer))
        assert torch.allclose(rows.exp().sum(dim=1), torch.ones(rows.shape[0]), atol=1e-4)
    # Their mean cross-entropy on the answer tokens is the response loss.
    for exchange, rows, loss in zip(ANCHORS, logprobs, response_losses(tiny, ANCHORS)):
        answer = encode_example(tiny.tokenizer, exchange, MAX_CONTEXT_TOKENS).response_ids
        assert float(-rows[torch.arange(len(answer)), torch.tensor(answer)].mean()) == pytest.approx(loss, abs=1e-4)


def test_mean_kl_on_the_top_k_is_exact_with_the_whole_vocabulary_and_a_lower_bound_below(tiny):
    base = answer_logprobs(tiny, ANCHORS)
    moved = answer_logprobs(moved_copy(tiny, 0.1), ANCHORS)
    exact = sum(float((b.exp() * (b - m)).sum()) for b, m in zip(base, moved)) / sum(b.shape[0] for b in base)
    vocab = base[0].shape[-1]
    assert exact > 0
    assert mean_kl(top_k(base, vocab), moved) == pytest.approx(exact, rel=1e-3)
    assert 0 <= mean_kl(top_k(base, 4), moved) <= exact + 1e-6
    assert mean_kl(top_k(base, 4), base) == pytest.approx(0.0, abs=1e-5)
    tops = top_k(base, 4)
    assert all(t.ids.shape == t.logprobs.shape == (b.shape[0], 4) for t, b in zip(tops, base))
    assert all(bool((t.logprobs[:, :-1] >= t.logprobs[:, 1:]).all()) for t in tops)  # best first


def test_streamed_top_k_and_kl_equal_those_of_the_whole_distributions(tiny):
    # The gate reads of each answer position only what it needs; the numbers must not move.
    base, moved = answer_logprobs(tiny, ANCHORS), moved_copy(tiny, 0.1)
    streamed = answer_top_k(tiny, ANCHORS, 4)
    for whole, part in zip(top_k(base, 4), streamed, strict=True):
        assert torch.equal(whole.ids, part.ids) and torch.allclose(whole.logprobs, part.logprobs, atol=1e-5)
    expected = mean_kl(streamed, answer_logprobs(moved, ANCHORS))
    assert expected > 0 and answer_kl(moved, ANCHORS, streamed) == pytest.approx(expected, rel=1e-5)


def test_base_against_itself_has_zero_kl_and_identical_fingerprint(tiny, suite):
    base = base_reference(tiny, suite, fake_embed)
    assert len(base.anchor_top_k) == len(ANCHORS)
    metrics, _ = evaluate(tiny, suite, fake_embed, base)
    assert metrics["kl_to_base"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["fingerprint_to_base"] == pytest.approx(1.0, abs=1e-5)
    # Which probes it answered, in bank order, for the gate's probe-by-probe comparison.
    assert set(metrics["probe_hits"]) <= {"0", "1"} and len(metrics["probe_hits"]) == len(suite.probes)
    assert metrics["probe_hits"].count("1") / len(suite.probes) == pytest.approx(metrics["probe_accuracy"])
    for key in ("acquisition_loss", "retention_loss"):
        assert metrics[key] > 0
    for key in ("acquisition_recall", "retention_recall"):
        assert 0 <= metrics[key] <= 1


def test_stored_base_metrics_are_reused(tiny, suite, monkeypatch):
    stored, fingerprint = {"probe_loss": 1.0}, np.ones((2, 3), dtype=np.float32)

    def no_evaluation(*args, **kwargs):
        raise AssertionError("the base was evaluated again")

    monkeypatch.setattr(gate_metrics, "evaluate", no_evaluation)
    base = base_reference(tiny, suite, fake_embed, metrics=stored, fingerprint=fingerprint)
    assert base.metrics is stored and base.fingerprint is fingerprint and len(base.anchor_top_k) == len(ANCHORS)


def test_metrics_are_reproducible(tiny, suite):
    base = base_reference(tiny, suite, fake_embed)
    first, _ = evaluate(tiny, suite, fake_embed, base)
    second, _ = evaluate(tiny, suite, fake_embed, base)
    assert first == second


def test_kl_grows_with_a_larger_update_and_is_measured_on_the_anchors_only(tiny, suite):
    base = base_reference(tiny, suite, fake_embed)
    kls = [evaluate(moved_copy(tiny, scale), suite, fake_embed, base)[0]["kl_to_base"] for scale in (0.01, 0.1)]
    assert 0 < kls[0] < kls[1]
    without_anchors = EvalSuite(**{**suite.__dict__, "anchors": []})
    assert evaluate(moved_copy(tiny, 0.1), without_anchors, fake_embed, base)[0]["kl_to_base"] == 0.0
    # The probes (and their prompts) are not where KL is measured: other probes, the same KL.
    other_probes = EvalSuite(**{**suite.__dict__, "probes": load_probes()[6:9]})
    assert evaluate(moved_copy(tiny, 0.1), other_probes, fake_embed, base)[0]["kl_to_base"] == pytest.approx(kls[1])


def test_recall_credits_replies_that_repeat_the_answer(tiny, monkeypatch):
    assert recalled("It is at 9:30 on Tuesdays.", "The standup is at 9:30 on Tuesdays.", "When is the standup?")
    assert not recalled("No idea, sorry.", "The standup is at 9:30 on Tuesdays.", "When is the standup?")
    assert not recalled("anything", "The standup?", "When is the standup?")  # the answer adds nothing
    items = [ask("When is the standup?", "The standup is at 9:30 on Tuesdays."),
             ask("Where is the key?", "Under the blue flowerpot by the door.")]
    assert recall(["At 9:30, Tuesdays.", "I do not know."], items) == 0.5
    assert recall([], []) is None


def test_evaluate_asks_every_question_alone_in_one_generation_call(tiny, monkeypatch):
    suite = EvalSuite(heldout_slices={}, acquisition=[ask("When is the standup?", "At 9:30 on Tuesdays.")],
                      retention=[ask("Where is the key?", "Under the blue flowerpot.")], probes=load_probes()[:3])
    calls = []

    def replies(loaded, conversations, *args, **kwargs):  # chat_replies' shape
        calls.append(conversations)
        return ["At 9:30 on Tuesdays." if "standup" in c[-1]["content"] else "No idea." for c in conversations]

    monkeypatch.setattr(gate_metrics, "chat_replies", replies)
    metrics, _ = evaluate(tiny, suite, lambda texts: np.ones((len(texts), 4)) / 2, None)
    assert len(calls) == 1  # probes, fingerprint prompts, learning and retention questions together
    asked = calls[0]
    assert asked[-2:] == [ex.messages[:-1] for ex in suite.acquisition + suite.retention]  # the question alone
    assert metrics["acquisition_recall"] == 1.0 and metrics["retention_recall"] == 0.0


def test_general_numbers_given_are_used_and_only_the_memory_questions_asked(tiny, suite, monkeypatch):
    base = base_reference(tiny, suite, fake_embed)
    whole, fingerprint = evaluate(tiny, suite, fake_embed, base)
    assert whole["general_key"] == suite.general_key()
    asked = []
    real = gate_metrics.chat_replies

    def replies(loaded, conversations, *args, **kwargs):
        asked.extend(conversations)
        return real(loaded, conversations, *args, **kwargs)

    monkeypatch.setattr(gate_metrics, "chat_replies", replies)
    stored = {**whole, "probe_accuracy": 0.123}  # a stored number is taken, not measured again
    again, again_fingerprint = evaluate(tiny, suite, fake_embed, base, general=(stored, fingerprint))
    assert asked == [ex.messages[:-1] for ex in suite.acquisition + suite.retention]
    assert again["probe_accuracy"] == 0.123 and again_fingerprint is fingerprint
    assert {k: again[k] for k in GENERAL_METRICS if k != "probe_accuracy"} == {
        k: whole[k] for k in GENERAL_METRICS if k != "probe_accuracy"}
    assert again["acquisition_loss"] == pytest.approx(whole["acquisition_loss"])


def test_the_general_key_follows_the_banks_only(suite):
    key = suite.general_key()
    assert dataclasses.replace(suite, acquisition=[], heldout_slices={}).general_key() == key  # memories: no
    assert dataclasses.replace(suite, probes=suite.probes[:-1]).general_key() != key
    assert dataclasses.replace(suite, max_new_tokens=suite.max_new_tokens + 1).general_key() != key
    soft = [replace_soft(a) for a in suite.anchors]
    assert dataclasses.replace(suite, anchors=soft).general_key() != key


def replace_soft(example):
    answer_tokens = 3
    return dataclasses.replace(example, soft=SoftTargets([[1, 2]] * answer_tokens, [[-0.1, -2.0]] * answer_tokens))


def test_the_base_reference_takes_the_anchors_cached_distribution(tiny, suite, monkeypatch):
    ids, logprobs = [[5, 7], [9, 2]], [[-0.2, -1.9], [-0.1, -2.5]]
    anchors = [dataclasses.replace(a, soft=SoftTargets(ids, logprobs)) for a in suite.anchors]
    monkeypatch.setattr(gate_metrics, "_answer_logits", lambda *a, **k: pytest.fail("the base was asked again"))
    tops = gate_metrics.anchor_top_k(tiny, anchors)
    assert [t.ids.tolist() for t in tops] == [ids] * len(anchors)
    assert all(torch.allclose(t.logprobs, torch.tensor(logprobs)) for t in tops)
