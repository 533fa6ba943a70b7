"""The evaluation suite every candidate checkpoint goes through before the gate.

Metrics (lower loss is better; all are means):
- heldout_loss: response loss on real exchanges set aside at ingest and never trained on;
- slice_losses: the same per time slice of those exchanges (oldest first), for forgetting;
- probe_loss / probe_accuracy: the shipped capability probes (trainers/probes.jsonl), scored by the
  loss of the reference answer and by whether the greedy answer contains an accepted string;
- kl_to_base: KL(base || candidate) of next-token distributions over the probe sequences;
- fingerprint_to_base / fingerprint_to_previous: cosine similarity of embeddings of the greedy
  answers to fixed open prompts (a behavioural fingerprint);
- acquisition: response loss of recently taught facts asked in other words.

`BaseReference` holds what is computed once from the frozen base model; `evaluate` runs the suite
on a candidate against it. Everything is greedy or a plain forward pass, so the same checkpoint
gives the same numbers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources

import numpy as np
import torch
import torch.nn.functional as F

from dreamd.trainers.examples import EncodedExample, TrainingExample, encode_example
from dreamd.trainers.generate import chat_replies
from dreamd.trainers.model_store import LoadedModel

# Evaluation exchanges are short; the cap only guards against a pathological one.
MAX_CONTEXT_TOKENS = 2048

FINGERPRINT_PROMPTS = [
    "Describe your favourite season in two sentences.",
    "Give me one tip for writing clear emails.",
    "What should I pack for a day of hiking?",
    "Explain what a database index is to a beginner.",
    "Suggest a name for a friendly robot.",
    "How can I fall asleep faster?",
]


def ask(question: str, answer: str, example_id: str = "") -> TrainingExample:
    """A one-question exchange, for probes and acquisition checks."""
    return TrainingExample(example_id, [{"role": "user", "content": question},
                                        {"role": "assistant", "content": answer}])


@dataclass(frozen=True)
class Probe:
    id: str
    kind: str
    prompt: str
    answer: str
    accept: tuple[str, ...]


def load_probes() -> list[Probe]:
    text = resources.files("dreamd.trainers").joinpath("probes.jsonl").read_text("utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [Probe(r["id"], r["kind"], r["prompt"], r["answer"], tuple(r["accept"])) for r in rows]


@torch.inference_mode()
def response_losses(loaded: LoadedModel, exchanges: list[TrainingExample], batch_size: int = 8) -> list[float]:
    """Mean cross-entropy per response token, one number per exchange (one plain forward pass:
    evaluation needs no context-frozen trick, and the same tokens as training)."""
    model, tokenizer = loaded.model, loaded.tokenizer
    losses: list[float] = []
    for start in range(0, len(exchanges), batch_size):
        encoded = [_whole(encode_example(tokenizer, ex, MAX_CONTEXT_TOKENS))
                   for ex in exchanges[start : start + batch_size]]
        width = max(len(ids) for ids, _ in encoded)
        input_ids = torch.full((len(encoded), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        labels = torch.full_like(input_ids, -100)
        for row, (ids, boundary) in enumerate(encoded):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            mask[row, : len(ids)] = 1
            labels[row, boundary : len(ids)] = torch.tensor(ids[boundary:])
        logits = model(input_ids=input_ids.to(model.device), attention_mask=mask.to(model.device)).logits.float()
        shifted = labels[:, 1:].to(model.device)
        token_loss = F.cross_entropy(logits[:, :-1].transpose(1, 2), shifted, reduction="none", ignore_index=-100)
        counted = (shifted != -100).sum(dim=1).clamp(min=1)
        losses += (token_loss.sum(dim=1) / counted).tolist()
    return losses


@torch.inference_mode()
def next_token_logprobs(loaded: LoadedModel, exchanges: list[TrainingExample]) -> list[torch.Tensor]:
    """Per exchange, the (positions, vocab) log-probabilities of every next token."""
    model, tokenizer = loaded.model, loaded.tokenizer
    result = []
    for exchange in exchanges:
        ids, _ = _whole(encode_example(tokenizer, exchange, MAX_CONTEXT_TOKENS))
        logits = model(input_ids=torch.tensor([ids], device=model.device)).logits[0].float()
        result.append(F.log_softmax(logits, dim=-1).cpu())
    return result


def _whole(encoded: EncodedExample) -> tuple[list[int], int]:
    """The token ids of the whole exchange and where its response starts."""
    return encoded.context_ids + encoded.response_ids, len(encoded.context_ids)


def mean_kl(reference: list[torch.Tensor], candidate: list[torch.Tensor]) -> float:
    """Mean over positions of KL(reference || candidate)."""
    total, count = 0.0, 0
    for ref, cand in zip(reference, candidate, strict=True):
        total += float((ref.exp() * (ref - cand)).sum())
        count += ref.shape[0]
    return total / max(count, 1)


def greedy_accuracy(replies: list[str], probes: list[Probe]) -> float:
    hits = [any(a.lower() in reply.lower() for a in probe.accept) for reply, probe in zip(replies, probes, strict=True)]
    return sum(hits) / max(len(hits), 1)


@dataclass
class EvalSuite:
    """What to evaluate on. The exchanges come from the memory graph's held-out set."""

    heldout_slices: dict[str, list[TrainingExample]]
    acquisition: list[TrainingExample] = field(default_factory=list)
    probes: list[Probe] = field(default_factory=load_probes)
    fingerprint_prompts: list[str] = field(default_factory=lambda: list(FINGERPRINT_PROMPTS))
    max_new_tokens: int = 32

    def probe_exchanges(self) -> list[TrainingExample]:
        return [ask(p.prompt, p.answer, f"probe:{p.id}") for p in self.probes]


@dataclass
class BaseReference:
    """What the base model says, computed once: KL and fingerprints are measured against it."""

    logprobs: list[torch.Tensor]
    fingerprint: np.ndarray
    metrics: dict


def evaluate(loaded: LoadedModel, suite: EvalSuite, embed, base: BaseReference | None,
             previous_fingerprint: np.ndarray | None = None) -> tuple[dict, np.ndarray]:
    """Run the suite on a model. `embed(texts) -> unit vectors`. Returns (metrics, fingerprint)."""
    slice_losses = {name: _mean(response_losses(loaded, exs)) for name, exs in suite.heldout_slices.items() if exs}
    all_heldout = [ex for exs in suite.heldout_slices.values() for ex in exs]
    probe_exchanges = suite.probe_exchanges()
    replies = chat_replies(loaded, [ex.messages[:-1] for ex in probe_exchanges], suite.max_new_tokens)
    answers = chat_replies(loaded, [[{"role": "user", "content": p}] for p in suite.fingerprint_prompts],
                           suite.max_new_tokens)
    fingerprint = embed(answers)
    logprobs = next_token_logprobs(loaded, probe_exchanges)
    metrics = {
        "heldout_loss": _mean(response_losses(loaded, all_heldout)) if all_heldout else None,
        "slice_losses": slice_losses,
        "probe_loss": _mean(response_losses(loaded, probe_exchanges)),
        "probe_accuracy": greedy_accuracy(replies, suite.probes),
        "kl_to_base": mean_kl(base.logprobs, logprobs) if base else 0.0,
        "fingerprint_to_base": _similarity(fingerprint, base.fingerprint if base else fingerprint),
        "fingerprint_to_previous": _similarity(fingerprint, previous_fingerprint if previous_fingerprint is not None
                                               else fingerprint),
        "acquisition_loss": _mean(response_losses(loaded, suite.acquisition)) if suite.acquisition else None,
    }
    return metrics, fingerprint


def base_reference(loaded: LoadedModel, suite: EvalSuite, embed) -> BaseReference:
    metrics, fingerprint = evaluate(loaded, suite, embed, base=None)
    return BaseReference(next_token_logprobs(loaded, suite.probe_exchanges()), fingerprint, metrics)


def _similarity(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.sum(a * b, axis=1)))


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")
