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

Batches: contexts are left-padded (so every row's context ends where its response starts) and
responses right-padded; attention masks hide the padding and explicit position ids give each row
the positions it would have alone, so a batch scores each example exactly as one by one.
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
    prefix_ids: torch.Tensor  # (B, P) context minus its last token, left-padded
    prefix_mask: torch.Tensor
    step_ids: torch.Tensor  # (B, R) last context token + response minus its last token, right-padded
    step_mask: torch.Tensor
    labels: torch.Tensor  # (B, R) the response, IGNORE where padded
    prefix_lengths: torch.Tensor  # (B,) real prefix tokens per row
    soft_ids: torch.Tensor | None = None  # (B, R, k) a teacher's top-k tokens, for rows that have them
    soft_logprobs: torch.Tensor | None = None  # (B, R, k); -inf where a row has no soft targets


def make_batch(examples: list[EncodedExample], pad_id: int, device: torch.device | str = "cpu") -> Batch:
    rows = len(examples)
    prefix_len = max(len(e.context_ids) - 1 for e in examples)
    step_len = max(len(e.response_ids) for e in examples)
    prefix_ids = torch.full((rows, prefix_len), pad_id, dtype=torch.long)
    prefix_mask = torch.zeros((rows, prefix_len), dtype=torch.long)
    step_ids = torch.full((rows, step_len), pad_id, dtype=torch.long)
    step_mask = torch.zeros((rows, step_len), dtype=torch.long)
    labels = torch.full((rows, step_len), IGNORE, dtype=torch.long)
    for row, example in enumerate(examples):
        prefix = example.context_ids[:-1]
        if prefix:
            prefix_ids[row, prefix_len - len(prefix) :] = torch.tensor(prefix)
            prefix_mask[row, prefix_len - len(prefix) :] = 1
        step = [example.context_ids[-1], *example.response_ids[:-1]]
        step_ids[row, : len(step)] = torch.tensor(step)
        step_mask[row, : len(step)] = 1
        labels[row, : len(step)] = torch.tensor(example.response_ids)
    soft_ids = soft_logprobs = None
    if any(e.soft is not None for e in examples):
        k = max(len(e.soft.ids[0]) for e in examples if e.soft is not None and e.soft.ids)
        soft_ids = torch.zeros((rows, step_len, k), dtype=torch.long)
        soft_logprobs = torch.full((rows, step_len, k), float("-inf"))
        for row, example in enumerate(examples):
            if example.soft is not None and example.soft.ids:
                ids, lps = torch.tensor(example.soft.ids), torch.tensor(example.soft.logprobs, dtype=torch.float32)
                soft_ids[row, : len(ids), : ids.shape[1]] = ids
                soft_logprobs[row, : len(ids), : ids.shape[1]] = lps

    def to(t: torch.Tensor | None) -> torch.Tensor | None:
        return t.to(device) if t is not None else None

    return Batch(to(prefix_ids), to(prefix_mask), to(step_ids), to(step_mask), to(labels), to(prefix_mask.sum(dim=1)),
                 to(soft_ids), to(soft_logprobs))


def causal_lm(model):
    """The transformers CausalLM inside a PEFT wrapper (LoRA layers are injected in place), or the model."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def frozen_context_cache(model, batch: Batch) -> ContextCache:
    """Phase 1: the context's key/value cache, built without gradient into a FRESH cache."""
    lm = causal_lm(model)
    cache = ContextCache(lm.config)
    if batch.prefix_ids.shape[1] == 0:
        return cache
    # Left padding: real tokens get positions 0..n-1 as they would alone; pads get 0 (masked anyway).
    positions = (batch.prefix_mask.cumsum(dim=1) - 1).clamp(min=0)
    decoder = lm.get_decoder()  # the context pass needs the cache, not logits
    length = batch.prefix_ids.shape[1]
    unpadded = bool(batch.prefix_mask.all())
    with torch.no_grad():
        # Very long contexts go in chunks: each attends to the cache so far plus itself, which
        # gives the same keys and values as one pass while bounding the attention scores and MLP
        # activations held at once. Up to 4K tokens one pass is faster.
        for start in range(0, length, PREFILL_CHUNK):
            end = min(start + PREFILL_CHUNK, length)
            cache.filling = True
            try:
                decoder(
                    input_ids=batch.prefix_ids[:, start:end],
                    # No padding and an empty cache: no mask at all, so sdpa runs its fused causal
                    # kernel instead of scoring every pair against an explicit mask.
                    attention_mask=None if unpadded and start == 0 else batch.prefix_mask[:, :end],
                    position_ids=positions[:, start:end],
                    past_key_values=cache,
                    use_cache=True,
                )
            except _ContextCached:
                pass
            finally:
                cache.filling = False
    return cache


def response_losses(model, batch: Batch, cache: DynamicCache) -> torch.Tensor:
    """Phase 2: per-example mean cross-entropy over every response token, with gradient."""
    lm = causal_lm(model)
    steps = batch.step_ids.shape[1]
    positions = batch.prefix_lengths[:, None] + torch.arange(steps, device=batch.step_ids.device)[None, :]
    output = lm(
        input_ids=batch.step_ids,
        attention_mask=torch.cat([batch.prefix_mask, batch.step_mask], dim=1),
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
    )
    losses = _per_row_ce(output.logits, batch.labels)
    if batch.soft_ids is None:
        return losses
    has_soft = torch.isfinite(batch.soft_logprobs[:, :, 0]).any(dim=1)
    return torch.where(has_soft, _per_row_kl(output.logits, batch.labels, batch.soft_ids, batch.soft_logprobs), losses)


def _per_row_kl(logits: torch.Tensor, labels: torch.Tensor, soft_ids: torch.Tensor,
                soft_logprobs: torch.Tensor) -> torch.Tensor:
    """Per row, the mean over response tokens of KL(teacher || model), the teacher's top-k tokens
    exact and the rest of its mass as one bucket: zero gradient where the model already matches
    the teacher, so an anchor holds behaviour where CE on its greedy tokens would sharpen it."""
    logp = F.log_softmax(logits.float(), dim=-1)
    model_top = logp.gather(2, soft_ids)  # (B, R, k)
    teacher = soft_logprobs.exp()  # 0 where absent
    rest_teacher = (1 - teacher.sum(dim=2)).clamp(min=1e-6)
    rest_model = (1 - model_top.exp().sum(dim=2)).clamp(min=1e-6)
    top_terms = torch.where(teacher > 0, teacher * (soft_logprobs - model_top), torch.zeros_like(teacher))
    kl = top_terms.sum(dim=2) + rest_teacher * (rest_teacher.log() - rest_model.log())  # (B, R)
    mask = (labels != IGNORE).float()
    return (kl * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


def _per_row_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    token_loss = F.cross_entropy(
        logits.float().transpose(1, 2), labels, ignore_index=IGNORE, reduction="none"
    )  # (B, R)
    counts = (labels != IGNORE).sum(dim=1).clamp(min=1)
    return token_loss.sum(dim=1) / counts


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
    """A batch's loss from its examples' losses: an example with soft targets (an anchor's KL to the
    base) counts `soft_weight` times, one with hard targets (a fact's cross-entropy) once. A KL near
    zero pulls back weakly while the facts' cross-entropy pushes, so the anchors may need more weight."""
    if soft_weight == 1.0:
        return losses.mean()
    weights = torch.tensor([soft_weight if e.soft is not None else 1.0 for e in examples], dtype=losses.dtype,
                           device=losses.device)
    return (losses * weights).mean()


def loss_step(model, examples: list[EncodedExample], pad_id: int, soft_weight: float = 1.0) -> torch.Tensor:
    """The training loss of one batch: each example's mean response-token loss, averaged (anchors
    weighted by `soft_weight`)."""
    return weighted_mean(frozen_losses(model, examples, pad_id), examples, soft_weight)


def completion_only_loss(model, example: EncodedExample) -> torch.Tensor:
    """The baseline: one full-sequence forward (gradient through the whole sequence), context labels
    masked. Same loss value as the frozen step, several times the time and memory."""
    lm = causal_lm(model)
    device = next(lm.parameters()).device
    ids = torch.tensor([example.context_ids + example.response_ids], device=device)
    labels = torch.tensor([[IGNORE] * len(example.context_ids) + example.response_ids], device=device)
    logits = lm(input_ids=ids, use_cache=False).logits
    if example.soft is not None:  # the same soft targets as the frozen step, on the response positions
        batch = make_batch([example], 0, device)
        response_logits = logits[:, len(example.context_ids) - 1 : -1]
        return _per_row_kl(response_logits, batch.labels, batch.soft_ids, batch.soft_logprobs)[0]
    return _per_row_ce(logits[:, :-1], labels[:, 1:])[0]


def completion_only_batch_loss(model, examples: list[EncodedExample], pad_id: int,
                               soft_weight: float = 1.0) -> torch.Tensor:
    """`loss_step`'s counterpart for plain fine-tuning: the mean of each example's completion-only
    loss, with gradient through the whole sequence (`pad_id` unused: one example per forward)."""
    return weighted_mean(torch.stack([completion_only_loss(model, example) for example in examples]), examples,
                         soft_weight)
