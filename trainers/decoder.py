"""Token-by-token generation for a batch of chats, each row with its own settings and its own end.

transformers' `generate` stops a batch as a whole, computes every row until the last one ends and
streams only one row, so dreamd steps the model itself: prompts left-padded (every prompt ends
where generation starts) with position ids counted over the real tokens only, one KV cache for
the batch, and after each step every row gets its token and its text delta. A row ends on its own
(an end-of-turn token, a stop string, its token budget, its caller gone); rows that ended are
dropped from the batch and the cache, so a long reply does not make the short ones' finished rows
cost compute. The prompts' common start (the chat template's system prompt) is run once.

Two users: dreamd's OpenAI-compatible server (daemon/serve/engine.py), which admits requests into
a running batch, and trainers/generate.py's greedy replies (the gate's probes, the anchors, the
teacher's answers to dream questions).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from dreamd.trainers.model_store import LoadedModel

MIN_SHARED_PREFIX = 8  # tokens; a shorter common start is not worth a forward pass of its own


@dataclass
class Row:
    """One request's generation: what it asks for, and (filled in here) what came of it."""

    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logit_bias: dict[int, float] = field(default_factory=dict)
    end_tokens: frozenset[int] = frozenset()  # tokens that end this row besides the model's own
    on_delta: Callable[[str], None] = lambda _text: None
    cancelled: Callable[[], bool] = lambda: False
    on_finish: Callable[[str], None] = lambda _finish: None
    # Results:
    tokens: list[int] = field(default_factory=list)
    text: str = ""  # the reply as sent so far (a held-back tail that may start a stop string excluded)
    finish: str | None = None  # "stop", "length" or "cancelled"
    _pending: str = ""  # decoded but not sent: it might be the start of a stop string
    _prefix_offset: int = 0
    _read_offset: int = 0
    _generator: torch.Generator | None = None


@dataclass
class _Batch:
    """The rows generating together, their KV cache, attention mask and last positions."""

    rows: list[Row]
    cache: object
    mask: torch.Tensor  # [rows, length]: 0 over each row's left padding
    last_position: torch.Tensor  # [rows, 1]


@torch.inference_mode()
def decode_batch(loaded: LoadedModel, rows: list[Row], admit: Callable[[int], list[Row]] | None = None,
                 max_rows: int | None = None) -> None:
    """Generate every row to its end, calling each row's `on_delta` as its text grows and its
    `on_finish` when it ends. Between steps, `admit(room)` may hand over up to `room` more rows
    (`max_rows` in all): they are prefilled apart and join the running batch, so a request that
    arrives mid-batch waits one step, not for the whole batch."""
    ends = end_token_ids(loaded)
    batch = _prefill(loaded, rows, ends)
    joinable = admit is not None and _mergeable(batch.cache)
    limit = max_rows or len(rows)
    while batch.rows or joinable:
        room = limit - len(batch.rows)
        newcomers = admit(room) if joinable and room > 0 else []
        if newcomers:
            joining = _prefill(loaded, newcomers, ends)
            batch = _merge(batch, joining) if batch.rows else joining
        if not batch.rows:
            return
        _step(loaded, batch, ends)


def end_token_ids(loaded: LoadedModel) -> set[int]:
    """The tokens that end a reply: the tokenizer's end of turn and padding token, and the eos ids of
    the model's generation config (what `generate` stops at), so every way dreamd generates agrees
    on where a reply ends."""
    tokenizer = loaded.tokenizer
    ids = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    configured = getattr(getattr(loaded.model, "generation_config", None), "eos_token_id", None)
    ids |= set(configured) if isinstance(configured, (list, tuple)) else {configured}
    return {int(i) for i in ids if i is not None}


def _prefill(loaded: LoadedModel, rows: list[Row], ends: set[int]) -> _Batch:
    model, tokenizer = loaded.model, loaded.tokenizer
    device = model.device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(ends)
    for row in rows:
        if row.temperature > 0:
            row._generator = torch.Generator(device="cpu")
            row._generator.manual_seed(row.seed if row.seed is not None else torch.seed())
    # Every row keeps at least its prompt's last token to run here: its logits give the first token.
    shared, cache = shared_prefix(model, [r.prompt_ids for r in rows], min(len(r.prompt_ids) for r in rows) - 1)
    # Each row is [shared prefix][left padding][the rest of its prompt]: padding may sit anywhere
    # the mask says, and positions count only real tokens, so every row sees its own prompt.
    rests = [r.prompt_ids[shared:] for r in rows]
    width = max(len(rest) for rest in rests)
    input_ids = torch.tensor([[pad] * (width - len(rest)) + rest for rest in rests], device=device)
    mask = torch.tensor([[1] * shared + [0] * (width - len(rest)) + [1] * len(rest) for rest in rests],
                        device=device)
    positions = ((mask.cumsum(-1) - 1).clamp(min=0))[:, shared:]
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                use_cache=True, logits_to_keep=1)
    batch = _Batch(list(rows), out.past_key_values, mask, positions[:, -1:])
    _take(loaded, batch, out.logits[:, -1, :], ends)
    return batch


def shared_prefix(model, prompts: list[list[int]], longest: int) -> tuple[int, object]:
    """The prompts' common start (the chat template's system prompt, often), at most `longest`
    tokens, run once instead of once per row: (its length, its KV cache repeated for every row).
    (0, None) when there is none worth a pass of its own."""
    if len(prompts) < 2:
        return 0, None
    shared = 0
    while shared < longest and all(p[shared] == prompts[0][shared] for p in prompts):
        shared += 1
    if shared < MIN_SHARED_PREFIX:
        return 0, None
    out = model(input_ids=torch.tensor([prompts[0][:shared]], device=model.device), use_cache=True,
                logits_to_keep=1)
    cache = out.past_key_values
    if not _mergeable(cache):
        return 0, None
    for layer in cache.layers:
        layer.keys = layer.keys.expand(len(prompts), -1, -1, -1).contiguous()
        layer.values = layer.values.expand(len(prompts), -1, -1, -1).contiguous()
    return shared, cache


def _step(loaded: LoadedModel, batch: _Batch, ends: set[int]) -> None:
    device = loaded.model.device
    input_ids = torch.tensor([[row.tokens[-1]] for row in batch.rows], device=device)
    batch.mask = torch.cat([batch.mask, batch.mask.new_ones((len(batch.rows), 1))], dim=1)
    batch.last_position = batch.last_position + 1
    out = loaded.model(input_ids=input_ids, attention_mask=batch.mask, position_ids=batch.last_position,
                       past_key_values=batch.cache, use_cache=True, logits_to_keep=1)
    batch.cache = out.past_key_values
    _take(loaded, batch, out.logits[:, -1, :], ends)


def _take(loaded: LoadedModel, batch: _Batch, logits: torch.Tensor, ends: set[int]) -> None:
    """Give every row its next token; rows that ended leave the batch and its cache."""
    chosen = pick_tokens(logits.float(), batch.rows)
    keep = []
    for slot, row in enumerate(batch.rows):
        token = chosen[slot]
        if row.cancelled():
            row.finish = "cancelled"
        elif token in ends or token in row.end_tokens:
            row.finish = "stop"
        else:
            row.tokens.append(token)
            _advance_text(row, loaded.tokenizer)
            if row.finish is None and len(row.tokens) >= row.max_tokens:
                row.finish = "length"
        if row.finish is None:
            keep.append(slot)
            continue
        if row._pending and row.finish != "cancelled":
            _send(row, row._pending)  # nothing more can follow: the held-back tail is text
            row._pending = ""
        row.on_finish(row.finish)
    if len(keep) < len(batch.rows):
        index = torch.tensor(keep, dtype=torch.long, device=batch.mask.device)
        if keep:
            batch.cache.batch_select_indices(index)
        batch.mask, batch.last_position = batch.mask[index], batch.last_position[index]
        batch.rows = [batch.rows[slot] for slot in keep]


def _mergeable(cache) -> bool:
    """Rows can join a running batch only through caches this module knows how to pad and stack."""
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


def _merge(batch: _Batch, joining: _Batch) -> _Batch:
    """One batch of both: the shorter side left-padded (masked) to the longer, then stacked."""
    length = max(batch.mask.shape[1], joining.mask.shape[1])

    def pad(tensor: torch.Tensor, dim: int) -> torch.Tensor:
        missing = length - tensor.shape[dim]
        if missing == 0:
            return tensor
        shape = list(tensor.shape)
        shape[dim] = missing
        return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)

    for mine, theirs in zip(batch.cache.layers, joining.cache.layers):
        mine.keys = torch.cat([pad(mine.keys, -2), pad(theirs.keys, -2)], dim=0)
        mine.values = torch.cat([pad(mine.values, -2), pad(theirs.values, -2)], dim=0)
    return _Batch(batch.rows + joining.rows, batch.cache, torch.cat([pad(batch.mask, 1), pad(joining.mask, 1)]),
                  torch.cat([batch.last_position, joining.last_position]))


def pick_tokens(logits: torch.Tensor, rows: list[Row]) -> list[int]:
    """The next token of every row: greedy at temperature 0, else sampled (logit bias, temperature,
    top-p) from the row's own seeded generator, so a seeded request repeats whatever it is batched with."""
    greedy = logits.argmax(dim=-1).tolist()
    chosen = []
    for slot, row in enumerate(rows):
        if not row.logit_bias and row.temperature <= 0:
            chosen.append(greedy[slot])
            continue
        scores = logits[slot].clone()
        for token, bias in row.logit_bias.items():
            if 0 <= token < scores.shape[0]:
                scores[token] += bias
        if row.temperature <= 0:
            chosen.append(int(scores.argmax()))
            continue
        probs = torch.softmax(scores / row.temperature, dim=-1)
        if row.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            # Keep the smallest set whose mass reaches top_p (the most likely token always stays).
            outside = sorted_probs.cumsum(0) - sorted_probs > row.top_p
            sorted_probs[outside] = 0.0
            probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
        chosen.append(int(torch.multinomial(probs.cpu(), 1, generator=row._generator)))
    return chosen


def _advance_text(row: Row, tokenizer) -> None:
    """Decode what the newest token added (a window of tokens, not the whole reply: a byte-level
    token may be half a character, shown as U+FFFD until its other half arrives), then send all of
    it that cannot be the start of a stop string; a stop string ends the row, cut before it."""
    prefix = tokenizer.decode(row.tokens[row._prefix_offset:row._read_offset], skip_special_tokens=True)
    full = tokenizer.decode(row.tokens[row._prefix_offset:], skip_special_tokens=True)
    if len(full) <= len(prefix) or full.endswith("\ufffd"):
        return
    pending = row._pending + full[len(prefix):]
    row._prefix_offset, row._read_offset = row._read_offset, len(row.tokens)
    if row.stop:
        # The held-back tail is part of `pending`, so a stop string never straddles sent text.
        hits = [pending.find(s) for s in row.stop if s and s in pending]
        if hits:
            row._pending = ""
            _send(row, pending[:min(hits)])
            row.finish = "stop"
            return
        hold = max((_overlap(pending, s) for s in row.stop if s), default=0)
        row._pending = pending[len(pending) - hold:] if hold else ""
        _send(row, pending[:len(pending) - hold])
    else:
        _send(row, pending)


def _overlap(text: str, stop: str) -> int:
    """The length of the longest end of `text` that is a start of `stop` (and so must wait)."""
    for size in range(min(len(text), len(stop) - 1), 0, -1):
        if stop.startswith(text[-size:]):
            return size
    return 0


def _send(row: Row, text: str) -> None:
    if text:
        row.text += text
        row.on_delta(text)
