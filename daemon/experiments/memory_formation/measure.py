"""What the memory-formation experiment measures on a model, at every checkpoint.

- per concept, on its held-out questions (never in any log): the mean log-probability per token
  of the fact's *value* inside the reference answer ("... lives on **Marrowick Island**."), so
  the words the question already gives away ("The Zypher lives on") do not count; greedy recall,
  the share of questions whose greedy reply contains an accepted answer string; and confusion, the
  share whose reply gives the *other* concept's answer instead (interference made visible);
- general capability: the shipped probe bank (trainers/probes.jsonl), reference-answer loss and
  greedy accuracy; and KL(base || model) on the answer tokens of the anchor bank (the base's top-k
  cached with the anchors): the quality gate's own evaluation of the shipped banks
  (`GENERAL_METRICS`), so the figures are the gate's, and a checkpoint the gate evaluated already
  is not measured twice (`Measurer`, below). The arms without a gate measure them at each phase's
  end only (run.py): a mid-phase point has `probes` and `anchor_kl` None.

Everything is greedy or a plain forward pass: the same weights give the same numbers.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass

import torch

from dreamd.daemon.config import Config
from dreamd.daemon.experiments.memory_formation.facts import Probe, probe_example
from dreamd.daemon.gate.evaluations import stored_general
from dreamd.daemon.service.state_dir import StateLayout
from dreamd.trainers.anchors import Anchor, measured
from dreamd.trainers.checkpoints.pointers import BASE
from dreamd.trainers.checkpoints.weights import load_as
from dreamd.trainers.examples import split_point
from dreamd.trainers.gate.metrics import (
    EVAL_BATCH,
    GENERAL_METRICS,
    BaseReference,
    EvalSuite,
    TopK,
    answer_kl,
    answer_logprobs,
    evaluate,
)
from dreamd.trainers.generate import chat_replies
from dreamd.trainers.model_store import LoadedModel

FACT_TOKENS = 24  # longest greedy reply to a fact question: the answer comes first, if at all


def value_logprobs(loaded: LoadedModel, probes: list[Probe]) -> list[float]:
    """Per probe, the mean log-probability of the value's tokens in the reference answer, given the
    held-out question (the gate's batched answer pass: a batch's common start runs once)."""
    tokenizer = loaded.tokenizer
    examples = [probe_example(probe) for probe in probes]
    out = []
    for probe, example, logprobs in zip(probes, examples, answer_logprobs(loaded, examples), strict=True):
        full, boundary = split_point(tokenizer, example.messages)
        encoding = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = encoding["input_ids"], encoding["offset_mapping"]
        answer_start = len(ids) - logprobs.shape[0]  # row j of `logprobs` predicts answer token j
        start = full.index(probe.value, boundary)  # the value as written in the response
        end = start + len(probe.value)
        positions = [i for i, (s, e) in enumerate(offsets) if s < end and e > start]
        out.append(float(torch.stack([logprobs[i - answer_start, ids[i]] for i in positions]).mean()))
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


def general_suite(anchors: list[Anchor], max_new_tokens: int) -> EvalSuite:
    """The gate's evaluation suite without memories: the probe bank, the anchors it measures and
    the fingerprint prompts, at the gate's answer length (so its `general_key` is the gate's)."""
    return EvalSuite(heldout_slices={}, anchors=[a.example() for a in measured(anchors)],
                     max_new_tokens=max_new_tokens)


def general_scores(loaded: LoadedModel, suite: EvalSuite, embed, base: BaseReference | None) -> dict:
    """The gate's GENERAL_METRICS of a model (probe loss, accuracy and hits, anchor KL, fingerprint)."""
    metrics, _fingerprint = evaluate(loaded, suite, embed, base)
    return {k: metrics[k] for k in GENERAL_METRICS}


def anchor_kl(loaded: LoadedModel, anchors: list[Anchor]) -> float:
    """Mean KL(base || model) over the answer tokens of the anchors the gate measures (the base's
    side: its cached top-k)."""
    anchors = measured(anchors)
    reference = [TopK(torch.tensor(a.top_ids), torch.tensor(a.top_logprobs)) for a in anchors]
    return answer_kl(loaded, [a.example() for a in anchors], reference)


def measure(loaded: LoadedModel, probes_by_concept: dict[str, list[Probe]], general: dict | None) -> dict:
    """Every number of one checkpoint: each concept's scores, then the capability probes and the
    anchor KL from `general` (its GENERAL_METRICS, measured here or by the gate; None: not measured)."""
    started = time.monotonic()
    result = {concept: concept_scores(loaded, probes) for concept, probes in probes_by_concept.items()}
    result["probes"] = {"loss": general["probe_loss"], "accuracy": general["probe_accuracy"]} if general else None
    result["anchor_kl"] = general["kl_to_base"] if general else None
    result["seconds"] = round(time.monotonic() - started, 2)
    return result


@dataclass
class GeneralReference:
    """What every arm's general numbers are measured with: the gate's suite without memories, the
    embedder (fingerprints) and the base's reference."""

    suite: EvalSuite
    embed: Callable
    base: BaseReference


class Measurer:
    """Measures checkpoints of one arm's state dir, each once (the same weights, the same numbers).
    A checkpoint the arm's gate evaluated already on the same banks has its general numbers (probes,
    anchor KL) taken from that evaluation instead of measured again."""

    def __init__(self, config: Config, layout: StateLayout, probes: dict, general: GeneralReference, base: dict):
        # The base is measured once for all arms: a cycle that promoted nothing shows its numbers.
        self.config, self.layout, self.probes, self.general = config, layout, probes, general
        self.cache = {BASE: base}

    def __call__(self, checkpoint: str, general: bool = True) -> dict:
        """Every number of `checkpoint`; with `general=False` its probe and anchor numbers only
        where its arm's gate measured them already (None otherwise), the fact questions always."""
        cached = self.cache.get(checkpoint)
        if cached is not None and (cached["probes"] is not None or not general):
            return cached
        loaded = load_as(self.config.model, self.layout.models, self.layout, checkpoint)
        scores = self._evaluated_by_gate(checkpoint) or (
            general_scores(loaded, self.general.suite, self.general.embed, self.general.base) if general else None)
        self.cache[checkpoint] = measure(loaded, self.probes, scores)
        return self.cache[checkpoint]

    def _evaluated_by_gate(self, checkpoint: str) -> dict | None:
        if not self.layout.database.exists():  # an arm without the loop (b, e) has no gate
            return None
        with closing(sqlite3.connect(self.layout.database)) as db:
            found = stored_general(db, checkpoint, self.general.suite.general_key(),
                                   len(self.general.suite.fingerprint_prompts))
        return found[0] if found else None


def _contains(reply: str, accepted: tuple[str, ...]) -> bool:
    return any(a.lower() in reply.lower() for a in accepted)
