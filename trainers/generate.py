"""Asking the model for replies to chats, with its own chat template.

Replies are generated in batches: prompts are left-padded (so every prompt ends where generation
starts) and masked, which on two CPU cores is several times the throughput of one at a time.

Greedy batches without stop strings (the gate's probes, the teacher's answers, the anchors) run
through `greedy_rows`, which drops a row from the batch as soon as it has ended: transformers'
`generate` computes every row until the last one ends. The gate's 230 probes end after 22 of their
32 tokens on average (half reach the cap); two thirds of a step is the linear layers, whose cost
grows with the rows once a batch is wide. Measured on two cores, the 230 probes' replies: 128 rows
a batch 34.0 s against 42.9 with `generate`; 64 rows 44.7 against 45.3 (narrow steps cost about the
same with fewer rows); 236 rows 37.3 against 38.0.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from transformers import DynamicCache, LogitsProcessor, LogitsProcessorList

from dreamd.trainers.model_store import LoadedModel


@dataclass(frozen=True)
class Generation:
    """One generated reply: its text, how many tokens it took, and why it ended."""

    text: str
    tokens: int
    finish: str  # "stop" (end of turn or a stop string), "length" (token budget) or "timeout"


class RowTemperature(LogitsProcessor):
    """A temperature per row of the batch, so dreams at different noise levels share one batch;
    a row at temperature 0 keeps only its most likely token (greedy inside a sampled batch)."""

    def __init__(self, temperatures: list[float]):
        self.temperatures = torch.tensor(temperatures, dtype=torch.float32)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        t = self.temperatures.to(scores.device)[:, None]
        scaled = scores / t.clamp(min=1e-6)
        greedy = torch.full_like(scores, float("-inf")).scatter(1, scores.argmax(dim=1, keepdim=True), 0.0)
        return torch.where(t > 0, scaled, greedy)


@torch.inference_mode()
def generate_chats(
    loaded: LoadedModel,
    conversations: list[list[dict]],
    max_new_tokens: int = 64,
    batch_size: int = 16,
    temperature: float | list[float] = 0.0,
    stop_strings: tuple[str, ...] = (),
    max_seconds: float | None = None,
    prefill: str = "",
    seed: int | None = None,
) -> list[Generation]:
    """One reply per conversation, in left-padded batches. `temperature` may be one per
    conversation; `stop_strings` end a row early (the text is cut before them); a batch still
    running after `max_seconds` stops, and its unfinished rows end with finish="timeout".
    `prefill` is written after the generation prompt as the start of the reply (not returned).
    `seed` seeds torch's global RNG before each batch (batch i: seed + i) so sampling repeats."""
    tokenizer, model = loaded.tokenizer, loaded.model
    temps = list(temperature) if isinstance(temperature, (list, tuple)) else [temperature] * len(conversations)
    if len(temps) != len(conversations):
        raise ValueError(f"{len(temps)} temperatures for {len(conversations)} conversations")
    done_ids = end_token_ids(loaded)
    results: list[Generation] = []
    for index, start in enumerate(range(0, len(conversations), batch_size)):
        prompts = [
            tokenizer.apply_chat_template(conv, add_generation_prompt=True, tokenize=False) + prefill
            for conv in conversations[start : start + batch_size]
        ]
        batch_temps = temps[start : start + batch_size]
        previous_side = tokenizer.padding_side
        tokenizer.padding_side = "left"
        try:
            # The template already wrote the special tokens; adding them again would double the BOS.
            inputs = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        finally:
            tokenizer.padding_side = previous_side
        if max(batch_temps) > 0:
            sampling = {"do_sample": True, "temperature": 1.0,
                        "logits_processor": LogitsProcessorList([RowTemperature(batch_temps)])}
        else:
            sampling = {"do_sample": False}
        if stop_strings:
            sampling.update(stop_strings=list(stop_strings), tokenizer=tokenizer)
        if max_seconds is not None:
            sampling["max_time"] = max_seconds
        if seed is not None:
            torch.manual_seed(seed + index)
        if max(batch_temps) == 0 and not stop_strings:
            deadline = time.monotonic() + max_seconds if max_seconds is not None else None
            new_tokens = greedy_rows(model, inputs["input_ids"], inputs["attention_mask"], max_new_tokens,
                                     done_ids, deadline)
        else:
            output = model.generate(
                **inputs, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **sampling
            )
            new_tokens = output[:, inputs["input_ids"].shape[1] :].tolist()
        for row in new_tokens:
            # A row ends at its first end-of-turn (or the padding generate writes once a stop string
            # appears); a row with neither was cut short by the token budget or by the clock.
            ended = next((i for i, token in enumerate(row) if token in done_ids), None)
            if ended is not None or _stopped(tokenizer.decode(row), stop_strings):
                finish = "stop"
            elif len(row) >= max_new_tokens:
                finish = "length"
            else:  # the batch ended with this row unfinished and under budget: only the clock does that
                finish = "timeout"
            kept = row[: ended if ended is not None else len(row)]
            text = _cut(tokenizer.decode(kept, skip_special_tokens=True), stop_strings)
            results.append(Generation(text.strip(), len(kept), finish))
    return results


@torch.inference_mode()
def greedy_rows(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int,
                done_ids: set[int], deadline: float | None = None) -> list[list[int]]:
    """Greedy continuations of a left-padded batch, one list of new tokens per row: up to and
    including its first token in `done_ids`, else `max_new_tokens` of them (fewer if `deadline`, a
    `time.monotonic()`, passed first). A row leaves the batch, and its keys and values the cache,
    once it has ended; the others' numbers are those of a pass without it."""
    rows = input_ids.shape[0]
    new: list[list[int]] = [[] for _ in range(rows)]
    active = torch.arange(rows)
    mask = attention_mask
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)  # each row's positions as it would have alone
    cache = DynamicCache(config=model.config)
    logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                   use_cache=True, logits_to_keep=1).logits[:, -1]
    last = positions[:, -1]
    for step in range(max_new_tokens):
        chosen = logits.argmax(dim=-1)
        tokens = chosen.tolist()
        ended = [token in done_ids for token in tokens]
        for row, token in zip(active.tolist(), tokens, strict=True):
            new[row].append(token)
        if step == max_new_tokens - 1 or all(ended) or (deadline is not None and time.monotonic() > deadline):
            break
        if any(ended):
            keep = torch.tensor([i for i, gone in enumerate(ended) if not gone], device=chosen.device)
            cache.reorder_cache(keep)
            active, chosen, mask, last = active[keep.cpu()], chosen[keep], mask[keep], last[keep]
        mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
        last = last + 1
        logits = model(input_ids=chosen[:, None], attention_mask=mask, position_ids=last[:, None],
                       past_key_values=cache, use_cache=True).logits[:, -1]
    return new


def end_token_ids(loaded: LoadedModel) -> set[int]:
    """The tokens that end a reply: the tokenizer's end of turn and padding token, and the eos ids of
    the model's generation config (what `generate` stops at). dreamd's server ends replies on the
    same set (daemon/serve/decoder.py), so both agree on where a reply ends."""
    tokenizer = loaded.tokenizer
    ids = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    configured = getattr(getattr(loaded.model, "generation_config", None), "eos_token_id", None)
    ids |= set(configured) if isinstance(configured, (list, tuple)) else {configured}
    return {int(i) for i in ids if i is not None}


def _stopped(text: str, stop_strings: tuple[str, ...]) -> bool:
    return any(s in text for s in stop_strings)


def _cut(text: str, stop_strings: tuple[str, ...]) -> str:
    at = min((text.find(s) for s in stop_strings if s in text), default=len(text))
    return text[:at]


def chat_replies(
    loaded: LoadedModel,
    conversations: list[list[dict]],
    max_new_tokens: int = 64,
    batch_size: int = 16,
    temperature: float = 0.0,
) -> list[str]:
    """One reply per conversation ([{"role": ..., "content": ...}, ...]); greedy when temperature is 0."""
    return [g.text for g in generate_chats(loaded, conversations, max_new_tokens, batch_size, temperature)]


def chat_reply(loaded: LoadedModel, messages: list[dict], max_new_tokens: int = 64) -> str:
    """The model's greedy reply to one chat."""
    return chat_replies(loaded, [messages], max_new_tokens=max_new_tokens)[0]
