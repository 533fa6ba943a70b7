"""The evaluation suite every candidate checkpoint goes through before the gate.

Metrics (lower loss is better; all are means), in the gate's three families:

damage — only on what the memories do not touch:
- probe_loss / probe_accuracy: the general probe bank (trainers/probes.jsonl, 200+ items of
  several kinds), the loss of each reference answer and whether the greedy answer holds an
  accepted string (probe_hits: which ones, so the gate can compare probe by probe);
- kl_to_base: KL(base || candidate) of the next-token distributions on the *answer* tokens of the
  anchor bank (trainers/anchors.py) — not on prompts or system text, where any change would count;
  the base's side is kept as its top-k tokens and the rest of its mass (a close approximation);
- fingerprint_to_base / fingerprint_to_previous: cosine similarity of embeddings of the greedy
  answers to fixed open prompts (reported; gated only if configured);
learning — the newest memories asked in other words: learning_loss (answer loss) and
learning_recall (greedy replies holding at least half of what the answer adds to the question);
retention — older memories asked the same way (retention_loss, retention_recall), and the
held-out exchanges never trained on (heldout_loss, and slice_losses per time slice).

`BaseReference` holds what is computed once from the frozen base model; `evaluate` runs the suite
on a candidate against it. Everything is greedy or a plain forward pass, so the same checkpoint
gives the same numbers.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources

import numpy as np
import torch
import torch.nn.functional as F

from dreamd.trainers.context_frozen import causal_lm
from dreamd.trainers.decoder import shared_prefix
from dreamd.trainers.examples import EncodedExample, TrainingExample, encode_example
from dreamd.trainers.generate import chat_replies
from dreamd.trainers.model_store import LoadedModel
from dreamd.trainers.words import recalled

# Evaluation exchanges are short; the cap only guards against a pathological one.
MAX_CONTEXT_TOKENS = 2048
TOP_K = 32  # of the base's distribution kept per anchor answer position, for anchors without a cached one
# Part of the suites' keys: raised when an evaluation measures something new (2: per-probe hits),
# so evaluations stored without it are measured again rather than compared on less.
MEASURES_VERSION = 2
EVAL_BATCH = 128  # rows per greedy generation batch; see the measurement in trainers/generate.py

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


def response_losses(loaded: LoadedModel, exchanges: list[TrainingExample], batch_size: int = 32) -> list[float]:
    """Mean cross-entropy per response token, one number per exchange (one plain forward pass:
    evaluation needs no context-frozen trick, and the same tokens as training)."""
    return [scored.loss for scored in scored_responses(loaded, exchanges, 0, batch_size)]


@dataclass(frozen=True)
class ScoredResponse:
    loss: float  # mean cross-entropy per response token
    top_k: TopK | None  # the distribution at each response token, where asked for


@torch.inference_mode()
def scored_responses(loaded: LoadedModel, exchanges: list[TrainingExample], k: int = 0,
                     batch_size: int = 32) -> list[ScoredResponse]:
    """`response_losses` and, for k > 0, each response's top-k from the same pass (a dream
    teacher's distribution, kept as the student's soft targets)."""
    result: list[ScoredResponse] = [None] * len(exchanges)  # type: ignore[list-item]
    for index, logits, answer in _answer_logits(loaded, exchanges, batch_size):
        result[index] = ScoredResponse(float(F.cross_entropy(logits, answer)), _top_k(logits, k) if k else None)
    return result


def _top_k(logits: torch.Tensor, k: int) -> TopK:
    values, ids = logits.topk(min(k, logits.shape[-1]), dim=-1)
    return TopK(ids.cpu(), (values - torch.logsumexp(logits, dim=-1, keepdim=True)).cpu())


def _answer_logits(loaded: LoadedModel, exchanges: list[TrainingExample], batch_size: int = 16):
    """Yields (index, float logits at the exchange's answer positions, its answer tokens) for every
    exchange, in batches of like length (an anchor's answer runs 10 to 96 tokens: less padding).
    Callers keep what they need of each (a few of its vocabulary's log-probabilities, its top-k),
    never the whole distribution: 64 anchors of ~90 answer tokens at a 49,152-token vocabulary are
    1.1 GB. A batch's common start (the chat template's system prompt, 21 of a probe's 49 tokens
    on the default model) runs once, and the output head runs only where an answer token is
    predicted: on a short exchange those two are most of the pass."""
    model, tokenizer = loaded.model, loaded.tokenizer
    lm = causal_lm(model)
    every = [_whole(encode_example(tokenizer, ex, MAX_CONTEXT_TOKENS)) for ex in exchanges]
    order = sorted(range(len(every)), key=lambda i: len(every[i][0]))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        chunk = [every[i] for i in rows]
        # The last context token must run here: its position predicts the first answer token.
        shared, cache = shared_prefix(lm, [ids for ids, _ in chunk], min(boundary for _, boundary in chunk) - 1)
        width = max(len(ids) for ids, _ in chunk) - shared
        input_ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), shared + width), dtype=torch.long)
        mask[:, :shared] = 1
        scored = torch.zeros((len(chunk), width - 1), dtype=torch.bool)
        for row, (ids, boundary) in enumerate(chunk):
            input_ids[row, : len(ids) - shared] = torch.tensor(ids[shared:])
            mask[row, : len(ids)] = 1
            scored[row, boundary - shared - 1 : len(ids) - shared - 1] = True
        device = model.device
        positions = torch.arange(shared, shared + width, device=device).expand(len(chunk), -1)
        hidden = lm.get_decoder()(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                                  position_ids=positions, past_key_values=cache).last_hidden_state[:, :-1]
        logits = lm.get_output_embeddings()(hidden[scored.to(device)]).float()  # (scored tokens, vocab)
        answers = [torch.tensor(ids[boundary:], device=device) for ids, boundary in chunk]
        yield from zip(rows, logits.split(scored.sum(dim=1).tolist()), answers)  # rows in order, positions in order


@torch.inference_mode()
def answer_logprobs(loaded: LoadedModel, exchanges: list[TrainingExample], batch_size: int = 16) -> list[torch.Tensor]:
    """Per exchange, the (answer positions, vocab) log-probabilities of each answer token's
    prediction: the positions where the model answers, not where it reads."""
    result: list[torch.Tensor] = [torch.empty(0)] * len(exchanges)
    for index, logits, _answer in _answer_logits(loaded, exchanges, batch_size):
        result[index] = F.log_softmax(logits, dim=-1).cpu()
    return result


@torch.inference_mode()
def answer_top_k(loaded: LoadedModel, exchanges: list[TrainingExample], k: int = TOP_K) -> list[TopK]:
    """`top_k(answer_logprobs(...))` without holding every distribution at once."""
    result: list[TopK] = [None] * len(exchanges)  # type: ignore[list-item]
    for index, logits, _answer in _answer_logits(loaded, exchanges):
        result[index] = _top_k(logits, k)
    return result


@torch.inference_mode()
def answer_kl(loaded: LoadedModel, exchanges: list[TrainingExample], reference: list[TopK]) -> float:
    """`mean_kl(reference, answer_logprobs(...))`, reading of each distribution only the
    reference's top-k and its normaliser."""
    total, count = 0.0, 0
    for index, logits, _answer in _answer_logits(loaded, exchanges):
        ref = reference[index]
        ids = ref.ids.to(logits.device)
        at_ref = (logits.gather(1, ids) - torch.logsumexp(logits, dim=-1, keepdim=True)).cpu()
        total += _kl_sum(ref, at_ref)
        count += ref.ids.shape[0]
    return total / max(count, 1)


def _whole(encoded: EncodedExample) -> tuple[list[int], int]:
    """The token ids of the whole exchange and where its response starts."""
    return encoded.context_ids + encoded.response_ids, len(encoded.context_ids)


@dataclass(frozen=True)
class TopK:
    """The base's distribution at each answer position: its top-k tokens and their log-probabilities."""

    ids: torch.Tensor  # (positions, k)
    logprobs: torch.Tensor  # (positions, k)


def top_k(logprobs: list[torch.Tensor], k: int = TOP_K) -> list[TopK]:
    return [TopK(*reversed(lp.topk(min(k, lp.shape[-1]), dim=-1))) for lp in logprobs]


def mean_kl(reference: list[TopK], candidate: list[torch.Tensor]) -> float:
    """Mean over positions of KL(reference || candidate), the reference's top-k tokens exact and
    the rest of its mass as one bucket (KL of the coarsened distributions, a lower bound that is
    tight when the top-k hold nearly all the mass, as they do for a model's own greedy answers)."""
    total = sum(_kl_sum(ref, cand.gather(1, ref.ids)) for ref, cand in zip(reference, candidate, strict=True))
    return total / max(sum(ref.ids.shape[0] for ref in reference), 1)


def _kl_sum(ref: TopK, at_ref: torch.Tensor) -> float:
    """Summed over positions: KL of the coarsened distributions, given the candidate's
    log-probabilities at the reference's top-k tokens (`at_ref`, positions × k)."""
    p_ref = ref.logprobs.exp()
    rest_ref = (1 - p_ref.sum(dim=1)).clamp(min=1e-12)
    rest_cand = (1 - at_ref.exp().sum(dim=1)).clamp(min=1e-12)
    kl = (p_ref * (ref.logprobs - at_ref)).sum(dim=1) + rest_ref * (rest_ref.log() - rest_cand.log())
    return float(kl.clamp(min=0).sum())


def probe_hits(replies: list[str], probes: list[Probe]) -> str:
    """Which probes the greedy replies answered ("1") or missed ("0"), in bank order: the gate
    compares them probe by probe with the base's (trainers/gate/rules.py, `accuracy_check`)."""
    return "".join("1" if any(a.lower() in reply.lower() for a in probe.accept) else "0"
                   for reply, probe in zip(replies, probes, strict=True))


def greedy_accuracy(replies: list[str], probes: list[Probe]) -> float:
    hits = probe_hits(replies, probes)
    return hits.count("1") / max(len(hits), 1)


def recall(replies: list[str], items: list[TrainingExample]) -> float | None:
    """Share of (question, answer) items whose greedy reply holds at least half of what the answer
    adds to the question (trainers/words.py); None without items."""
    if not items:
        return None
    hits = [recalled(reply, ex.messages[-1]["content"], ex.messages[-2]["content"])
            for reply, ex in zip(replies, items, strict=True)]
    return sum(hits) / len(hits)


@dataclass
class EvalSuite:
    """What to evaluate on: the held-out exchanges and the reworded questions come from the
    memory graph (daemon/gate/suite.py); probes, anchors and fingerprint prompts are shipped."""

    heldout_slices: dict[str, list[TrainingExample]]
    acquisition: list[TrainingExample] = field(default_factory=list)  # learning: the newest memories
    retention: list[TrainingExample] = field(default_factory=list)  # older memories
    anchors: list[TrainingExample] = field(default_factory=list)  # anchor prompts and the base's answers
    probes: list[Probe] = field(default_factory=load_probes)
    fingerprint_prompts: list[str] = field(default_factory=lambda: list(FINGERPRINT_PROMPTS))
    max_new_tokens: int = 32

    def probe_exchanges(self) -> list[TrainingExample]:
        return [ask(p.prompt, p.answer, f"probe:{p.id}") for p in self.probes]

    def general_key(self) -> str:
        """A hash of the shipped banks this suite measures on (what GENERAL_METRICS depend on)."""
        described = {"probes": [(p.id, p.prompt, p.accept) for p in self.probes],
                     "anchors": [(a.messages[-1]["content"], a.soft is not None) for a in self.anchors],
                     "fingerprint": self.fingerprint_prompts, "max_new_tokens": self.max_new_tokens,
                     "measures": MEASURES_VERSION}
        return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class BaseReference:
    """What the base model says, computed once: KL and fingerprints are measured against it."""

    anchor_top_k: list[TopK]
    fingerprint: np.ndarray
    metrics: dict


# What an evaluation measures on the shipped banks alone: it depends on the weights, not on the
# memory graph, so it is reused while the memories (and with them the suite) change.
GENERAL_METRICS = ("probe_loss", "probe_accuracy", "probe_hits", "kl_to_base", "fingerprint_to_base")


def evaluate(loaded: LoadedModel, suite: EvalSuite, embed, base: BaseReference | None,
             previous_fingerprint: np.ndarray | None = None,
             general: tuple[dict, np.ndarray] | None = None) -> tuple[dict, np.ndarray]:
    """Run the suite on a model. `embed(texts) -> unit vectors`. Returns (metrics, fingerprint).
    `general`: this model's GENERAL_METRICS and fingerprint from an earlier evaluation on the same
    banks (`suite.general_key()`), so only what the memories ask is measured again.
    Every greedy answer is generated in one batched call and every loss in another: on CPU the
    per-step overhead of generation dominates, so fewer, wider batches are what makes it fast."""
    probe_exchanges = [] if general else suite.probe_exchanges()
    slices = {name: exs for name, exs in suite.heldout_slices.items() if exs}
    scored = {"probes": probe_exchanges, "acquisition": suite.acquisition, "retention": suite.retention,
              **{f"slice:{name}": exs for name, exs in slices.items()}}
    losses = _split(response_losses(loaded, [ex for exs in scored.values() for ex in exs]), scored)
    asked = {"probes": [ex.messages[:-1] for ex in probe_exchanges],
             "fingerprint": [] if general else [[{"role": "user", "content": p}] for p in suite.fingerprint_prompts],
             "acquisition": [ex.messages[:-1] for ex in suite.acquisition],
             "retention": [ex.messages[:-1] for ex in suite.retention]}
    replies = _split(chat_replies(loaded, [chat for chats in asked.values() for chat in chats], suite.max_new_tokens,
                                  EVAL_BATCH), asked)
    if general:
        general_metrics, fingerprint = {k: general[0][k] for k in GENERAL_METRICS}, general[1]
    else:
        fingerprint = embed(replies["fingerprint"])
        general_metrics = {
            "probe_loss": _mean(losses["probes"]),
            "probe_accuracy": greedy_accuracy(replies["probes"], suite.probes),
            "probe_hits": probe_hits(replies["probes"], suite.probes),
            "kl_to_base": answer_kl(loaded, suite.anchors, base.anchor_top_k)
            if base and suite.anchors else 0.0,
            "fingerprint_to_base": _similarity(fingerprint, base.fingerprint if base else fingerprint),
        }
    heldout = [loss for name in slices for loss in losses[f"slice:{name}"]]
    metrics = {
        "heldout_loss": _mean(heldout) if heldout else None,
        "slice_losses": {name: _mean(losses[f"slice:{name}"]) for name in slices},
        **general_metrics,
        "fingerprint_to_previous": _similarity(fingerprint, previous_fingerprint if previous_fingerprint is not None
                                               else fingerprint),
        "acquisition_loss": _mean(losses["acquisition"]) if suite.acquisition else None,
        "acquisition_recall": recall(replies["acquisition"], suite.acquisition),
        "retention_loss": _mean(losses["retention"]) if suite.retention else None,
        "retention_recall": recall(replies["retention"], suite.retention),
        "general_key": suite.general_key(),
    }
    return metrics, fingerprint


def _split(values: list, groups: dict[str, list]) -> dict[str, list]:
    """A flat list of per-item results back into the groups it was made from, in order."""
    out, start = {}, 0
    for name, items in groups.items():
        out[name] = values[start : start + len(items)]
        start += len(items)
    return out


def base_reference(loaded: LoadedModel, suite: EvalSuite, embed, metrics: dict | None = None,
                   fingerprint: np.ndarray | None = None) -> BaseReference:
    """The base's reference; `metrics` and `fingerprint` when they are stored already. The base's
    distribution on the anchors is the one cached with them (their soft targets), measured only
    for anchors that carry none."""
    if metrics is None or fingerprint is None:
        metrics, fingerprint = evaluate(loaded, suite, embed, base=None)
    return BaseReference(anchor_top_k(loaded, suite.anchors), fingerprint, metrics)


def anchor_top_k(loaded: LoadedModel, anchors: list[TrainingExample]) -> list[TopK]:
    if anchors and all(a.soft is not None for a in anchors):
        return [TopK(torch.tensor(a.soft.ids), torch.tensor(a.soft.logprobs)) for a in anchors]
    return answer_top_k(loaded, anchors)


def _similarity(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.sum(a * b, axis=1)))


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")
