"""The context-frozen step on a tiny Llama: same loss as completion-only, gradient only through the
response, a fresh cache per example, batches that score like single examples, and soft targets
(a teacher's top-k distribution) learned by KL."""

import os

import pytest
import torch

from dreamd.trainers import context_frozen
from dreamd.trainers.context_frozen import completion_only_batch_loss, completion_only_loss, frozen_losses, loss_step
from dreamd.trainers.examples import EncodedExample, SoftTargets, TrainingExample, encode_example, encode_examples
from dreamd.trainers.gate.metrics import answer_logprobs, top_k
from dreamd.trainers.model_store import LoadedModel
from tests.helpers.tiny import tiny_llama, tiny_tokenizer
from tests.helpers.train import chats

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture
def setup():
    tokenizer = tiny_tokenizer()
    model = tiny_llama().train()
    return model, tokenizer, encode_examples(tokenizer, chats(5), max_context_tokens=512)


def test_loss_equals_completion_only_loss(setup):
    model, tokenizer, examples = setup
    frozen = frozen_losses(model, examples, tokenizer.pad_token_id)
    baseline = torch.stack([completion_only_loss(model, e) for e in examples])
    assert frozen.shape == (len(examples),)
    assert torch.allclose(frozen, baseline, atol=1e-4), (frozen, baseline)


def test_every_layer_learns_through_the_response(setup):
    model, tokenizer, examples = setup
    loss_step(model, examples[:2], tokenizer.pad_token_id).backward()
    for index, layer in enumerate(model.model.layers):
        modules = {**dict(layer.self_attn.named_children()), **dict(layer.mlp.named_children())}
        for name in PROJECTIONS:
            grad = modules[name].weight.grad
            assert grad is not None and grad.abs().sum() > 0, f"layer {index} {name} got no gradient"


def _leaf_embeddings(model):
    """Make every embedding output a leaf we can ask for its gradient afterwards."""
    leaves = []

    def hook(_module, _inputs, output):
        leaf = output.detach().requires_grad_(True)
        leaves.append(leaf)
        return leaf

    return leaves, model.get_input_embeddings().register_forward_hook(hook)


def test_no_gradient_reaches_the_context(setup):
    model, tokenizer, examples = setup
    example = examples[1]
    leaves, handle = _leaf_embeddings(model)
    try:
        loss_step(model, [example], tokenizer.pad_token_id).backward()
        context_pass, response_pass = leaves
        assert context_pass.grad is None  # built under no_grad: nothing flows back into it
        assert response_pass.grad is not None and response_pass.grad.abs().sum() > 0
        leaves.clear()
        # The baseline does backpropagate into the context: the property is not vacuous.
        completion_only_loss(model, example).backward()
        context_part = leaves[0].grad[0, : len(example.context_ids)]
        assert context_part.abs().sum() > 0
    finally:
        handle.remove()


def test_frozen_gradient_differs_from_completion_only(setup):
    """Same loss, different gradient: the stop-gradient on the context's keys and values is real."""
    model, tokenizer, examples = setup
    k_proj = model.model.layers[0].self_attn.k_proj.weight
    loss_step(model, [examples[0]], tokenizer.pad_token_id).backward()
    frozen = k_proj.grad.clone()
    model.zero_grad()
    completion_only_loss(model, examples[0]).backward()
    assert not torch.allclose(frozen, k_proj.grad, atol=1e-6)


def test_every_example_gets_a_fresh_cache(setup, monkeypatch):
    model, tokenizer, examples = setup
    made = []

    class Spy(context_frozen.ContextCache):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(context_frozen, "ContextCache", Spy)
    first = frozen_losses(model, [examples[0]], tokenizer.pad_token_id)
    other = frozen_losses(model, [examples[3]], tokenizer.pad_token_id)
    again = frozen_losses(model, [examples[0]], tokenizer.pad_token_id)
    assert len({id(cache) for cache in made}) == 3
    for cache, example in zip(made, [examples[0], examples[3], examples[0]]):
        assert cache.get_seq_length() == len(example.context_ids) + len(example.response_ids) - 1
    assert torch.equal(first, again) and not torch.equal(first, other)


@pytest.mark.parametrize("pack_tokens", [1, 260, context_frozen.PACK_TOKENS])
def test_a_batch_scores_like_its_examples_one_by_one(setup, monkeypatch, pack_tokens):
    """One example per padded row (1), two or three to a row (120), all in one row (the default)."""
    model, tokenizer, examples = setup
    monkeypatch.setattr(context_frozen, "PACK_TOKENS", pack_tokens)
    lengths = {(len(e.context_ids), len(e.response_ids)) for e in examples}
    assert len(lengths) == len(examples)  # really different lengths: padding is exercised
    batch = context_frozen.make_batch(examples, tokenizer.pad_token_id)
    rows = batch.step.ids.shape[0]
    assert rows == len(examples) if pack_tokens == 1 else rows == 1 if pack_tokens > 1000 else 1 < rows < len(examples)
    batch = frozen_losses(model, examples, tokenizer.pad_token_id)
    alone = torch.stack([frozen_losses(model, [e], tokenizer.pad_token_id)[0] for e in examples])
    assert torch.allclose(batch, alone, atol=1e-5), (batch, alone)

    # Gradients agree too: the mean over the batch equals the mean of single-example gradients.
    weight = model.model.layers[1].mlp.down_proj.weight
    model.zero_grad()
    batch.mean().backward()
    batched = weight.grad.clone()
    model.zero_grad()
    for e in examples:
        (frozen_losses(model, [e], tokenizer.pad_token_id)[0] / len(examples)).backward()
    assert torch.allclose(batched, weight.grad, atol=1e-5)


def test_a_one_token_context_still_predicts_the_first_response_token(setup):
    model, tokenizer, _ = setup
    example = EncodedExample("short", context_ids=[5], response_ids=[6, 7, 8])
    assert torch.allclose(frozen_losses(model, [example], tokenizer.pad_token_id)[0],
                          completion_only_loss(model, example), atol=1e-5)


def test_a_chunked_context_pass_scores_as_one_pass(setup, monkeypatch):
    """The context goes through in chunks (bounded memory at long contexts): the cache, and so the
    losses, must be those of one pass, in a packed row and in padded rows (one example each)."""
    model, tokenizer, examples = setup
    pad = tokenizer.pad_token_id
    longest = max(len(e.context_ids) for e in examples)
    monkeypatch.setattr(context_frozen, "PREFILL_CHUNK", longest + 1)
    whole = frozen_losses(model, examples, pad)
    for pack_tokens in (1, context_frozen.PACK_TOKENS):
        monkeypatch.setattr(context_frozen, "PACK_TOKENS", pack_tokens)
        for chunk in (1, 7, 32):
            monkeypatch.setattr(context_frozen, "PREFILL_CHUNK", chunk)
            chunked = frozen_losses(model, examples, pad)
            assert torch.allclose(chunked, whole, atol=1e-5), (pack_tokens, chunk, chunked, whole)
    assert min(len(e.context_ids) for e in examples) < longest - 7  # some rows end in pad-only chunks


def test_the_context_pass_stops_once_the_last_layer_has_cached_its_keys_and_values(setup, monkeypatch):
    """The last layer's attention and MLP and the final norm feed nothing the response reads: the
    context pass skips them (in every chunk), and the response pass still runs them."""
    model, tokenizer, examples = setup
    batch = context_frozen.make_batch(examples[:2], tokenizer.pad_token_id)
    ran = []
    watched = {"last_mlp": model.model.layers[-1].mlp, "before_last_mlp": model.model.layers[-2].mlp,
               "final_norm": model.model.norm}
    handles = [module.register_forward_hook(lambda *_, name=name: ran.append(name))
               for name, module in watched.items()]
    try:
        for chunk in (4096, 5):
            monkeypatch.setattr(context_frozen, "PREFILL_CHUNK", chunk)
            ran.clear()
            cache = context_frozen.frozen_context_cache(model, batch)
            chunks = -(-batch.prefix.ids.shape[1] // chunk)
            assert ran == ["before_last_mlp"] * chunks
            assert len(cache.layers) == len(model.model.layers)
            assert all(layer.keys.shape[-2] == batch.prefix.ids.shape[1] for layer in cache.layers)
        ran.clear()
        context_frozen.response_losses(model, batch, cache)
        assert ran == ["before_last_mlp", "last_mlp", "final_norm"]
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("pack_tokens", [1, context_frozen.PACK_TOKENS])
def test_the_plain_baselines_batch_loss_has_the_same_value_and_a_gradient_into_the_context(setup, monkeypatch,
                                                                                           pack_tokens):
    model, tokenizer, examples = setup
    monkeypatch.setattr(context_frozen, "PACK_TOKENS", pack_tokens)
    plain = completion_only_batch_loss(model, examples[:3], tokenizer.pad_token_id)
    assert torch.isclose(plain, loss_step(model, examples[:3], tokenizer.pad_token_id), atol=1e-4)
    one_by_one = torch.stack([completion_only_loss(model, e) for e in examples[:3]]).mean()
    assert torch.isclose(plain, one_by_one, atol=1e-5)
    # Its gradient is the mean of the one-by-one full-sequence gradients.
    weight = model.model.layers[1].self_attn.q_proj.weight
    model.zero_grad()
    plain.backward()
    packed = weight.grad.clone()
    model.zero_grad()
    one_by_one.backward()
    assert torch.allclose(packed, weight.grad, atol=1e-5)
    leaves, handle = _leaf_embeddings(model)
    try:
        completion_only_batch_loss(model, examples[:1], tokenizer.pad_token_id).backward()
    finally:
        handle.remove()
    context_len = len(examples[0].context_ids)
    assert leaves[0].grad[:, : context_len - 1].abs().sum() > 0  # unlike the frozen step


def test_grouped_kv_attention_is_scoped_to_the_step_and_leaves_a_users_setting(monkeypatch, setup):
    model, tokenizer, examples = setup
    monkeypatch.delenv(context_frozen.GQA_FLAG, raising=False)
    seen = []
    original = context_frozen.response_losses
    monkeypatch.setattr(context_frozen, "response_losses",
                        lambda *a: seen.append(os.environ.get(context_frozen.GQA_FLAG)) or original(*a))
    frozen_losses(model, examples[:2], tokenizer.pad_token_id)
    assert seen == ["1"] and context_frozen.GQA_FLAG not in os.environ
    monkeypatch.setenv(context_frozen.GQA_FLAG, "0")
    frozen_losses(model, examples[:2], tokenizer.pad_token_id)
    assert seen[-1] == "0" and os.environ[context_frozen.GQA_FLAG] == "0"


def with_soft(tokenizer, example: TrainingExample, ids, logprobs) -> EncodedExample:
    soft = TrainingExample(example.id, example.messages, SoftTargets(ids, logprobs))
    return encode_example(tokenizer, soft, max_context_tokens=512)


def own_top_k(model, tokenizer, example: TrainingExample, k: int = 8):
    """The model's own top-k distribution at each response token of `example`."""
    [tops] = top_k(answer_logprobs(LoadedModel(model, tokenizer, None), [example]), k)
    return tops.ids.tolist(), tops.logprobs.tolist()


def test_soft_targets_are_learned_by_kl_zero_where_the_model_already_matches():
    tokenizer, model = tiny_tokenizer(), tiny_llama().train()
    example = chats(3)[1]
    ids, logprobs = own_top_k(model, tokenizer, example)
    own = with_soft(tokenizer, example, ids, logprobs)
    assert own.soft is not None and len(own.soft.ids) == len(own.response_ids)
    loss = frozen_losses(model, [own], tokenizer.pad_token_id)[0]
    assert -1e-6 <= loss.item() < 1e-3  # zero up to float rounding
    assert completion_only_loss(model, own).item() < 1e-3  # the baseline honours soft targets too
    plain = encode_examples(tokenizer, [example], max_context_tokens=512)[0]
    assert frozen_losses(model, [plain], tokenizer.pad_token_id)[0].item() > 1.0  # CE on the tokens is not 0
    # Another teacher: all its mass on a token the model does not favour; its loss is clearly positive.
    other_ids = [[(row[-1] + 1) % len(tokenizer)] for row in ids]
    other = with_soft(tokenizer, example, other_ids, [[0.0] for _ in ids])
    assert frozen_losses(model, [other], tokenizer.pad_token_id)[0].item() > 1.0
    shuffled = with_soft(tokenizer, example, [row[::-1] for row in ids], logprobs)  # same values, other tokens
    assert frozen_losses(model, [shuffled], tokenizer.pad_token_id)[0].item() > 0.01
    # A teacher the model matches gives (almost) no gradient; its tokens' CE would.
    model.zero_grad()
    loss_step(model, [own], tokenizer.pad_token_id).backward()
    matched = sum(float(p.grad.abs().sum()) for p in model.parameters() if p.grad is not None)
    model.zero_grad()
    loss_step(model, [plain], tokenizer.pad_token_id).backward()
    cross_entropy = sum(float(p.grad.abs().sum()) for p in model.parameters() if p.grad is not None)
    assert matched < 1e-3 * cross_entropy


def test_a_batch_mixing_soft_and_plain_rows_keeps_the_plain_rows_cross_entropy():
    tokenizer, model = tiny_tokenizer(), tiny_llama().train()
    examples = chats(4)
    soft_source = examples[2]
    ids, logprobs = own_top_k(model, tokenizer, soft_source)
    other_ids = [[(row[-1] + 1) % len(tokenizer)] for row in ids]
    soft = with_soft(tokenizer, soft_source, other_ids, [[0.0] for _ in ids])
    plain = encode_examples(tokenizer, [examples[0], examples[3]], max_context_tokens=512)
    mixed = frozen_losses(model, [plain[0], soft, plain[1]], tokenizer.pad_token_id)
    alone = torch.stack([frozen_losses(model, [e], tokenizer.pad_token_id)[0] for e in (plain[0], soft, plain[1])])
    assert torch.allclose(mixed, alone, atol=1e-5), (mixed, alone)
    for row, example in ((0, plain[0]), (2, plain[1])):  # the plain rows: their CE, unchanged
        assert torch.allclose(mixed[row], completion_only_loss(model, example), atol=1e-4)
    assert torch.allclose(mixed[1], completion_only_loss(model, soft), atol=1e-4)
    cross_entropy = frozen_losses(model, encode_examples(tokenizer, [soft_source], 512), tokenizer.pad_token_id)[0]
    assert not torch.isclose(mixed[1], cross_entropy, atol=1e-3)  # the soft row is scored by KL, not CE


def test_soft_targets_must_cover_every_response_token():
    tokenizer = tiny_tokenizer()
    example = chats(1)[0]
    response = encode_examples(tokenizer, [example], max_context_tokens=512)[0].response_ids
    with pytest.raises(ValueError, match="soft targets for"):
        with_soft(tokenizer, example, [[1]] * (len(response) - 1), [[0.0]] * (len(response) - 1))


def test_anchor_weight_scales_only_the_soft_rows_of_a_batch():
    tokenizer, model = tiny_tokenizer(), tiny_llama().train()
    examples = chats(3)
    ids, _logprobs = own_top_k(model, tokenizer, examples[1])
    other = with_soft(tokenizer, examples[1], [[(row[-1] + 1) % len(tokenizer)] for row in ids], [[0.0] for _ in ids])
    plain = encode_examples(tokenizer, [examples[0], examples[2]], max_context_tokens=512)
    # A dream teacher's targets (not held) count once, as a fact's cross-entropy does.
    shifted = SoftTargets([[(row[-1] + 2) % len(tokenizer)] for row in ids], [[0.0] for _ in ids], held=False)
    taught = encode_example(tokenizer, TrainingExample("taught", examples[1].messages, shifted), max_context_tokens=512)
    batch = [plain[0], other, plain[1], taught]
    rows = frozen_losses(model, batch, tokenizer.pad_token_id).detach()
    assert rows[3] > 1.0  # far from the model's own distribution: a weight on it would show
    for weight in (1.0, 4.0):
        expected = (rows[0] + weight * rows[1] + rows[2] + rows[3]) / 4
        assert torch.isclose(loss_step(model, batch, tokenizer.pad_token_id, soft_weight=weight), expected, atol=1e-4)
        plain_loss = completion_only_batch_loss(model, batch, tokenizer.pad_token_id, soft_weight=weight)
        assert torch.isclose(plain_loss, expected, atol=1e-3)
