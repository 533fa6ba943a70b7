"""What the memory-formation experiment measures on a model, at every checkpoint.

- per concept, on its held-out questions (never in any log): the mean log-probability per token
  of the fact's *value* inside the reference answer ("... lives on **Marrowick Island**."), so
  the words the question already gives away ("The Zypher lives on") do not count; greedy recall,
  the share of questions whose greedy reply contains an accepted answer string; and confusion, the
  share whose reply gives the *other* concept's answer instead (interference made visible);
- general capability: the shipped probe bank (trainers/probes.jsonl), reference-answer loss and
  greedy accuracy, as the quality gate measures them; and KL(base || model) on the answer tokens
  of the anchor bank (the base's top-k cached with the anchors), as the gate measures it.

Everything is greedy or a plain forward pass: the same weights give the same numbers.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from dreamd.daemon.experiments.memory_formation.facts import Probe, probe_example
from dreamd.trainers.anchors import Anchor, measured
from dreamd.trainers.examples import split_point
from dreamd.trainers.gate.metrics import (
    EVAL_BATCH,
    TopK,
    answer_logprobs,
    ask,
    greedy_accuracy,
    load_probes,
    mean_kl,
    response_losses,
)
from dreamd.trainers.generate import chat_replies
from dreamd.trainers.model_store import LoadedModel

FACT_TOKENS = 24  # longest greedy reply to a fact question: the answer comes first, if at all
PROBE_TOKENS = 32  # as the quality gate's default (evaluation.max_new_tokens)


@torch.inference_mode()
def value_logprobs(loaded: LoadedModel, probes: list[Probe]) -> list[float]:
    """Per probe, the mean log-probability of the value's tokens in the reference answer, given the
    held-out question (one forward pass each; the exchanges are a few dozen tokens)."""
    model, tokenizer = loaded.model, loaded.tokenizer
    out = []
    for probe in probes:
        full, boundary = split_point(tokenizer, probe_example(probe).messages)
        encoding = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = encoding["input_ids"], encoding["offset_mapping"]
        start = full.index(probe.value, boundary)  # the value as written in the response
        end = start + len(probe.value)
        positions = [i for i, (s, e) in enumerate(offsets) if s < end and e > start and i > 0]
        logits = model(input_ids=torch.tensor([ids], device=model.device)).logits[0].float()
        logp = F.log_softmax(logits[:-1], dim=-1)  # row i predicts token i + 1
        out.append(float(torch.stack([logp[i - 1, ids[i]] for i in positions]).mean()))
    return out


def concept_scores(loaded: LoadedModel, probes: list[Probe]) -> dict:
    """Log-probability, recall and confusion of one concept's held-out questions."""
    logprobs = value_logprobs(loaded, probes)
    replies = chat_replies(loaded, [[{"role": "user", "content": p.question}] for p in probes], FACT_TOKENS,
                           EVAL_BATCH)
    hits = [_contains(reply, p.accept) for reply, p in zip(replies, probes, strict=True)]
    confused = [not hit and _contains(reply, p.other_accept)
                for hit, reply, p in zip(hits, replies, probes, strict=True)]
    return {
        "logprob": sum(logprobs) / len(logprobs),
        "recall": sum(hits) / len(hits),
        "confusion": sum(confused) / len(confused),
        "per_question": [{"slot": p.slot, "question": p.question, "logprob": round(lp, 4), "hit": hit, "reply": reply}
                         for p, lp, hit, reply in zip(probes, logprobs, hits, replies, strict=True)],
    }


def capability_scores(loaded: LoadedModel) -> dict:
    """The general-capability probes: reference-answer loss and greedy accuracy."""
    probes = load_probes()
    exchanges = [ask(p.prompt, p.answer, f"probe:{p.id}") for p in probes]
    replies = chat_replies(loaded, [ex.messages[:-1] for ex in exchanges], PROBE_TOKENS, EVAL_BATCH)
    losses = response_losses(loaded, exchanges)
    return {"loss": sum(losses) / len(losses), "accuracy": greedy_accuracy(replies, probes)}


def anchor_kl(loaded: LoadedModel, anchors: list[Anchor]) -> float:
    """Mean KL(base || model) over the answer tokens of the anchors the gate measures (the base's
    side: its cached top-k)."""
    anchors = measured(anchors)
    reference = [TopK(torch.tensor(a.top_ids), torch.tensor(a.top_logprobs)) for a in anchors]
    return mean_kl(reference, answer_logprobs(loaded, [a.example() for a in anchors]))


def measure(loaded: LoadedModel, probes_by_concept: dict[str, list[Probe]], anchors: list[Anchor]) -> dict:
    """Every number of one checkpoint: each concept's scores, the capability probes, the anchor KL."""
    started = time.monotonic()
    result = {concept: concept_scores(loaded, probes) for concept, probes in probes_by_concept.items()}
    result["probes"] = capability_scores(loaded)
    result["anchor_kl"] = anchor_kl(loaded, anchors)
    result["seconds"] = round(time.monotonic() - started, 2)
    return result


def _contains(reply: str, accepted: tuple[str, ...]) -> bool:
    return any(a.lower() in reply.lower() for a in accepted)
