"""Training examples: a chat split into the context the model reads and the response it learns.

The split is made on ONE tokenization of the whole conversation, at the character where the
response starts (the end of the prompt the chat template writes with `add_generation_prompt`).
Tokenizing the two halves separately can merge or split characters differently at the boundary,
so the halves would not be the tokens the model sees at inference; cutting one token list cannot
have that problem: context + response is the whole conversation's tokenization by construction.
A token that straddles the boundary (a template whose prompt ends in a space, say, before a BPE
token " Paris") goes to the response, so the response is always whole. The context then loses its oldest tokens
down to `max_context_tokens`; the response is always kept whole.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SoftTargets:
    """A teacher's distribution at each response token: its top-k token ids and log-probabilities.
    An example that carries them is learned by matching that distribution (KL), not its tokens.
    `held`: an anchor's (the base's distribution, held; its KL counts `training.anchor_weight`
    times); False: a dream teacher's (the model with its notes; taught, counted as a fact's loss)."""

    ids: list[list[int]]  # (response tokens, k)
    logprobs: list[list[float]]
    held: bool = True

    def to_bytes(self) -> bytes:
        """Stored form (the dreams table): k, then the ids as uint32 and the log-probabilities as float32."""
        k = len(self.ids[0]) if self.ids else 0
        return (np.asarray(k, dtype="<u4").tobytes() + np.asarray(self.ids, dtype="<u4").tobytes()
                + np.asarray(self.logprobs, dtype="<f4").tobytes())

    @classmethod
    def from_bytes(cls, blob: bytes, held: bool = False) -> SoftTargets:
        k = int(np.frombuffer(blob[:4], dtype="<u4")[0])
        if k == 0:
            return cls([], [], held)
        half = (len(blob) - 4) // 2
        ids = np.frombuffer(blob[4 : 4 + half], dtype="<u4").reshape(-1, k)
        logprobs = np.frombuffer(blob[4 + half :], dtype="<f4").reshape(-1, k)
        return cls(ids.astype(int).tolist(), logprobs.astype(float).tolist(), held)


@dataclass(frozen=True)
class TrainingExample:
    """A chat whose last message is the assistant response to learn; `id` traces it to its memories."""

    id: str
    messages: list[dict]
    soft: SoftTargets | None = None


@dataclass(frozen=True)
class EncodedExample:
    id: str
    context_ids: list[int]
    response_ids: list[int]
    truncated: int = 0  # context tokens dropped from the left
    soft: SoftTargets | None = None


def split_point(tokenizer, messages: list[dict]) -> tuple[str, int]:
    """The whole conversation's text and the character offset where the response starts."""
    if not messages or messages[-1].get("role") != "assistant":
        raise ValueError("a training example must end with an assistant message (the response)")
    if len(messages) < 2:
        raise ValueError("a training example needs at least one message before the response")
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    if not full.startswith(prompt):
        raise ValueError("the chat template does not render the prompt as a prefix of the whole chat")
    return full, len(prompt)


def encode_example(tokenizer, example: TrainingExample, max_context_tokens: int) -> EncodedExample:
    full, boundary = split_point(tokenizer, example.messages)
    # The template already wrote the special tokens; adding them again would double the BOS.
    encoding = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoding["input_ids"], encoding["offset_mapping"]
    # The first token holding any response character begins the response.
    cut = next((i for i, (_start, end) in enumerate(offsets) if end > boundary), len(ids))
    context, response = ids[:cut], ids[cut:]
    if not context or not response:
        raise ValueError(f"example {example.id!r} has an empty context or response after tokenizing")
    dropped = max(0, len(context) - max_context_tokens)
    if example.soft is not None and len(example.soft.ids) != len(response):
        raise ValueError(f"example {example.id!r}: {len(example.soft.ids)} soft targets for {len(response)} tokens")
    return EncodedExample(example.id, context[dropped:], response, truncated=dropped, soft=example.soft)


def encode_examples(tokenizer, examples: list[TrainingExample], max_context_tokens: int) -> list[EncodedExample]:
    return [encode_example(tokenizer, example, max_context_tokens) for example in examples]
