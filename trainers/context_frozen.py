"""The context-frozen step: learn the response, take the context as given.

Phase 1 runs the context (all but its last token) through the decoder under `torch.no_grad()` with
`use_cache=True`: only the key/value cache is kept, no activations and no logits (the LM head over
every context position would be a fifth of that pass's work at 4K tokens), and the pass stops once
the last layer has stored its keys and values (see ContextCache). Phase 2 runs the last
context token and the response (minus its last token) with gradient against that cache, so every
response token, the first included, is predicted and scored. The forward values are exactly those
of one full-sequence pass, so the loss equals completion-only loss; the gradient differs on
purpose: it stops at the context's keys and values, so the weights learn how to answer from a
context, not how to re-encode it, at a fraction of the time and memory.

Batches are packed (trainers/packing.py): several examples end to end in a row, each attending
only to itself at the positions it would have alone, so a batch scores each example exactly as one
by one, without running padding through the model. Plain completion-only training (the
experiment's baseline) is the same batch with nothing frozen: the whole exchange runs with gradient.
Every call builds a fresh cache: transformers' DynamicCache grows in place, so a reused one would
silently prepend the previous example's context.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from dreamd.trainers.examples import EncodedExample
from dreamd.trainers.packing import PACK_TOKENS, Packed, attention_mask, pack, pack_groups, segment_mean

IGNORE = -100
PREFILL_CHUNK = 4096  # context tokens per no-grad pass; see frozen_context_cache
# transformers' sdpa attention expands the grouped key/value heads (repeat_kv) whenever a mask is
# given, and autograd keeps the expanded copies of every layer for the backward pass: at 4K tokens
# of context that is a fifth of the step's peak memory. This flag makes it pass the grouped heads
# to torch's sdpa (enable_gqa) instead; same numbers. Only on CPU: on CUDA a mask with GQA would
# push sdpa off its fused kernels.
GQA_FLAG = "TRANSFORMERS_SDPA_FORCE_GQA"


class _ContextCached(Exception):
    """Ends the context pass early: the cache holds every layer's keys and values (ContextCache)."""


class ContextCache(DynamicCache):
    """The context pass's key/value cache. While `filling`, it ends the pass as soon as the last
    decoder layer has stored its keys and values: that layer's attention and MLP and the final norm
    feed nothing the response pass reads (a thirtieth of the pass on the default model). Models
    whose last layer keeps no keys and values (linear attention) never stop early: a full pass."""

    def __init__(self, config):
        super().__init__(config=config)
        self.last_layer = config.get_text_config().num_hidden_layers - 1
        self.filling = False

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        keys_values = super().update(key_states, value_states, layer_idx, *args, **kwargs)
        if self.filling and layer_idx == self.last_layer:
            raise _ContextCached  # transformers' forward wrappers restore their state in `finally`
        return keys_values


@dataclass
class Batch:
    """A batch packed (trainers/packing.py): each example's tokens split at `split` into a prefix,
    run without gradient into the cache, and the step, run with gradient against it."""

    prefix: Packed  # the tokens before the split
    step: Packed  # from the split to the second-to-last token: each predicts the next
    labels: torch.Tensor  # (rows, step width) the next token where it is a response token, else IGNORE
    count: int  # examples
    soft_ids: torch.Tensor | None = None  # (rows, step width, k) a teacher's top-k tokens, where it has them
    soft_logprobs: torch.Tensor | None = None  # (rows, step width, k); -inf where a token has no soft target


def make_batch(examples: list[EncodedExample], pad_id: int, device: torch.device | str = "cpu",
               frozen: bool = True) -> Batch:
    """The context-frozen batch: the prefix is the context minus its last token, the step the last
    context token and the response minus its last token, so every response token is predicted with
    gradient. With `frozen=False` (plain completion-only training) the prefix is empty and the
    step the whole exchange: the gradient reaches the context too."""
    sequences = [e.context_ids + e.response_ids for e in examples]
    splits = [len(e.context_ids) - 1 if frozen else 0 for e in examples]
    groups = pack_groups([len(seq) - 1 for seq in sequences], PACK_TOKENS)
    prefix = pack(groups, [seq[:cut] for seq, cut in zip(sequences, splits, strict=True)], [0] * len(examples), pad_id)
    step = pack(groups, [seq[cut:-1] for seq, cut in zip(sequences, splits, strict=True)], splits, pad_id)
    # Where each example's response starts in its step row: the step token at position p predicts
    # the example's token p + 1, so the labels (and a teacher's soft targets) sit from there on.
    answers: dict[int, tuple[int, int]] = {}
    for row, group in enumerate(groups):
        at = 0
        for i in group:
            answers[i] = (row, at + len(examples[i].context_ids) - 1 - splits[i])
            at += len(sequences[i]) - 1 - splits[i]
    labels = torch.full(step.ids.shape, IGNORE, dtype=torch.long)
    for i, (row, first) in answers.items():
        labels[row, first : first + len(examples[i].response_ids)] = torch.tensor(examples[i].response_ids)
    soft_ids = soft_logprobs = None
    if any(e.soft is not None for e in examples):
        k = max(len(e.soft.ids[0]) for e in examples if e.soft is not None)
        soft_ids = torch.zeros((*labels.shape, k), dtype=torch.long)
        soft_logprobs = torch.full((*labels.shape, k), float("-inf"))
        for i, (row, first) in answers.items():
            if examples[i].soft is not None:
                ids = torch.tensor(examples[i].soft.ids)
                soft_ids[row, first : first + len(ids), : ids.shape[1]] = ids
                soft_logprobs[row, first : first + len(ids), : ids.shape[1]] = torch.tensor(
                    examples[i].soft.logprobs, dtype=torch.float32)

    def to(t: torch.Tensor | None) -> torch.Tensor | None:
        return t.to(device) if t is not None else None

    return Batch(prefix.to(device), step.to(device), labels.to(device), len(examples), to(soft_ids), to(soft_logprobs))


def causal_lm(model):
    """The transformers CausalLM inside a PEFT wrapper (LoRA layers are injected in place), or the model."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _dtype(lm) -> torch.dtype:
    return next(lm.parameters()).dtype


def frozen_context_cache(model, batch: Batch) -> ContextCache:
    """Phase 1: the prefix's key/value cache, built without gradient into a FRESH cache."""
    lm = causal_lm(model)
    cache = ContextCache(lm.config)
    prefix = batch.prefix
    length = prefix.ids.shape[1]
    if length == 0:
        return cache
    decoder = lm.get_decoder()  # the context pass needs the cache, not logits
    # One example alone in its row, unpadded: no mask at all on the first chunk, so sdpa runs its
    # fused causal kernel instead of scoring every pair against an explicit mask.
    alone = prefix.ids.shape[0] == 1 and bool((prefix.segments == prefix.segments[0, 0]).all())
    with torch.no_grad():
        # Very long contexts go in chunks: each attends to the cache so far plus itself, which
        # gives the same keys and values as one pass while bounding the attention scores and MLP
        # activations held at once. Up to 4K tokens one pass is faster.
        for start in range(0, length, PREFILL_CHUNK):
            end = min(start + PREFILL_CHUNK, length)
            # Each chunk's mask is made for it: a whole context's would be (width x width) at once.
            mask = None if alone and start == 0 else attention_mask(
                prefix.segments[:, start:end], prefix.segments[:, :end], causal=True, dtype=_dtype(lm), offset=start)
            cache.filling = True
            try:
                decoder(
                    input_ids=prefix.ids[:, start:end],
                    attention_mask=mask,
                    position_ids=prefix.positions[:, start:end],
                    past_key_values=cache,
                    use_cache=True,
                )
            except _ContextCached:
                pass
            finally:
                cache.filling = False
    return cache


def response_losses(model, batch: Batch, cache: DynamicCache) -> torch.Tensor:
    """Phase 2: per-example mean loss over every response token, with gradient: (examples,)."""
    lm = causal_lm(model)
    step = batch.step
    mask = torch.cat([attention_mask(step.segments, batch.prefix.segments, causal=False, dtype=_dtype(lm)),
                      attention_mask(step.segments, step.segments, causal=True, dtype=_dtype(lm))], dim=-1)
    output = lm(input_ids=step.ids, attention_mask=mask, position_ids=step.positions, past_key_values=cache,
                use_cache=True)
    # Flattened to (tokens, vocab): cross_entropy over a transposed (rows, vocab, width) view sums the
    # vocabulary less exactly (7e-5 off a float64 loss at 64 tokens, against 1e-5 flattened).
    logits = output.logits.float()
    token_loss = F.cross_entropy(logits.flatten(0, 1), batch.labels.flatten(), ignore_index=IGNORE,
                                 reduction="none").view(batch.labels.shape)  # (rows, width)
    if batch.soft_ids is not None:
        soft = torch.isfinite(batch.soft_logprobs[:, :, 0])
        token_loss = torch.where(soft, _token_kl(logits, batch.soft_ids, batch.soft_logprobs), token_loss)
    return segment_mean(token_loss, step.segments, batch.labels != IGNORE, batch.count)


def _token_kl(logits: torch.Tensor, soft_ids: torch.Tensor, soft_logprobs: torch.Tensor) -> torch.Tensor:
    """Per token, KL(teacher || model), the teacher's top-k tokens exact and the rest of its mass as
    one bucket: zero gradient where the model already matches the teacher, so an anchor holds
    behaviour where CE on its greedy tokens would sharpen it."""
    logp = F.log_softmax(logits.float(), dim=-1)
    model_top = logp.gather(2, soft_ids)  # (rows, width, k)
    teacher = soft_logprobs.exp()  # 0 where absent
    rest_teacher = (1 - teacher.sum(dim=2)).clamp(min=1e-6)
    rest_model = (1 - model_top.exp().sum(dim=2)).clamp(min=1e-6)
    top_terms = torch.where(teacher > 0, teacher * (soft_logprobs - model_top), torch.zeros_like(teacher))
    return top_terms.sum(dim=2) + rest_teacher * (rest_teacher.log() - rest_model.log())


def frozen_losses(model, examples: list[EncodedExample], pad_id: int) -> torch.Tensor:
    """Context-frozen per-example losses (B,) for a batch of examples of any lengths."""
    device = next(causal_lm(model).parameters()).device
    batch = make_batch(examples, pad_id, device)
    with grouped_kv_attention(device):
        return response_losses(model, batch, frozen_context_cache(model, batch))


@contextlib.contextmanager
def grouped_kv_attention(device: torch.device):
    """Within: sdpa attends on the grouped key/value heads, not expanded copies (see GQA_FLAG).
    The forward builds the autograd graph, so this need not cover the backward pass."""
    if device.type != "cpu" or GQA_FLAG in os.environ:  # a user's own setting wins
        yield
        return
    os.environ[GQA_FLAG] = "1"
    try:
        yield
    finally:
        os.environ.pop(GQA_FLAG, None)


def weighted_mean(losses: torch.Tensor, examples: list[EncodedExample], soft_weight: float) -> torch.Tensor:
    """A batch's loss from its examples' losses: an example whose soft targets are held (an anchor's
    KL to the base) counts `soft_weight` times, one that teaches (a fact's cross-entropy, a dream
    teacher's KL) once. A KL near zero pulls back weakly while the facts push, so the anchors may
    need more weight."""
    if soft_weight == 1.0:
        return losses.mean()
    weights = torch.tensor([soft_weight if e.soft is not None and e.soft.held else 1.0 for e in examples],
                           dtype=losses.dtype, device=losses.device)
    return (losses * weights).mean()


def loss_step(model, examples: list[EncodedExample], pad_id: int, soft_weight: float = 1.0) -> torch.Tensor:
    """The training loss of one batch: each example's mean response-token loss, averaged (anchors
    weighted by `soft_weight`)."""
    return weighted_mean(frozen_losses(model, examples, pad_id), examples, soft_weight)


def completion_only_loss(model, example: EncodedExample) -> torch.Tensor:
    """The reference: one plain full-sequence forward of one example (gradient through the whole
    sequence), context labels masked. Same loss value as the frozen step."""
    lm = causal_lm(model)
    device = next(lm.parameters()).device
    ids = torch.tensor([example.context_ids + example.response_ids], device=device)
    logits = lm(input_ids=ids, use_cache=False).logits[0, len(example.context_ids) - 1 : -1]  # predict the response
    labels = torch.tensor(example.response_ids, device=device)
    if example.soft is not None:  # the same soft targets as the frozen step
        soft_ids = torch.tensor(example.soft.ids, device=device)
        soft_logprobs = torch.tensor(example.soft.logprobs, dtype=torch.float32, device=device)
        return _token_kl(logits[None], soft_ids[None], soft_logprobs[None])[0].mean()
    return F.cross_entropy(logits.float(), labels)


def completion_only_batch_loss(model, examples: list[EncodedExample], pad_id: int,
                               soft_weight: float = 1.0) -> torch.Tensor:
    """`loss_step`'s counterpart for plain fine-tuning: the same packed batch with nothing frozen (the
    whole exchange runs with gradient), each example's loss as `completion_only_loss` gives it."""
    device = next(causal_lm(model).parameters()).device
    batch = make_batch(examples, pad_id, device, frozen=False)
    with grouped_kv_attention(device):
        losses = response_losses(model, batch, ContextCache(causal_lm(model).config))
    return weighted_mean(losses, examples, soft_weight)
