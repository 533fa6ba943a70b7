"""The anchor bank: general prompts with the base model's own answers, against forgetting.

A share of every training round is these exchanges (the daemon's training set mixes them in), so
while the weights take in new facts they keep being pulled back to how the base answers ordinary
requests. They are learned as a KL-to-base term: each carries the base's top-k distribution at
every answer token, and the loss is KL(base || model) there (trainers/context_frozen.py), which
is zero where the model still answers as the base did — cross-entropy on the base's greedy tokens
would instead sharpen the model away from it. The gate measures KL to the base on the same answer
positions (gate/metrics.py).

The answers (greedy) and their distributions are computed once per base model and bank and kept
in a JSON file beside the state (`cache_dir`): the same anchor for every round of a lineage.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import structlog

from dreamd.trainers.atomic import write_atomically
from dreamd.trainers.examples import SoftTargets, TrainingExample

log = structlog.get_logger(__name__)

ANSWER_TOKENS = 96  # a two- or three-sentence answer; longer ones are cut, the cut text is what is kept
TOP_K = 16  # of the base's distribution kept per answer token (nearly all its mass on a greedy answer)
# KL to the base is measured (by the gate, by the experiment) on this many anchors spread evenly
# over the bank, so every kind of prompt counts: each is a forward pass over up to 96 answer
# tokens, and the gate's time is bounded.
MEASURED_ANCHORS = 64


@dataclass(frozen=True)
class Anchor:
    id: str
    prompt: str
    answer: str
    top_ids: list[list[int]] | None = None  # the base's top-k tokens at each answer token
    top_logprobs: list[list[float]] | None = None

    def example(self) -> TrainingExample:
        soft = SoftTargets(self.top_ids, self.top_logprobs) if self.top_ids else None
        return TrainingExample(f"anchor:{self.id}", [{"role": "user", "content": self.prompt},
                                                     {"role": "assistant", "content": self.answer}], soft)


def measured(anchors: list[Anchor], count: int = MEASURED_ANCHORS) -> list[Anchor]:
    """`count` anchors evenly spaced over the bank's order (the whole bank when it is smaller)."""
    if len(anchors) <= count:
        return list(anchors)
    return [anchors[(i * len(anchors)) // count] for i in range(count)]


def bank_text() -> str:
    return resources.files("dreamd.trainers").joinpath("anchors.jsonl").read_text("utf-8")


def anchor_prompts() -> list[tuple[str, str]]:
    """(id, prompt) of every shipped anchor prompt."""
    rows = [json.loads(line) for line in bank_text().splitlines() if line.strip()]
    return [(r["id"], r["prompt"]) for r in rows]


def model_fingerprint(model_dir: Path) -> str:
    """The base model's files as (name, size, modification time): a copy made with its times kept
    (`cp -p`, `shutil.copytree`) shares the cache, a model converted or saved again does not."""
    root = Path(model_dir).resolve()
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return "\n".join(f"{p.relative_to(root)} {p.stat().st_size} {p.stat().st_mtime_ns}" for p in files)


def cache_path(cache_dir: Path, model_dir: Path) -> Path:
    """Where the answers of this base model to this bank are kept: a new base or a new bank gets a
    new file."""
    key = hashlib.sha256(f"{model_fingerprint(model_dir)}\n{bank_text()}\n{TOP_K}".encode()).hexdigest()[:16]
    return cache_dir / f"anchors-{key}.json"


def base_anchors(model_dir: Path, cache_dir: Path, load_base) -> list[Anchor]:
    """The anchor bank with the base model's answers: read from the cache, or generated once with
    `load_base()` (called only then) and cached."""
    path = cache_path(cache_dir, model_dir)
    if path.exists():
        return [Anchor(**row) for row in json.loads(path.read_text("utf-8"))["anchors"]]
    from dreamd.trainers.gate.metrics import EVAL_BATCH, answer_logprobs, top_k
    from dreamd.trainers.generate import chat_replies

    prompts = anchor_prompts()
    loaded = load_base()
    # In the gate's wide batches: on CPU a generation step costs nearly the same for 16 rows or 64.
    replies = chat_replies(loaded, [[{"role": "user", "content": p}] for _i, p in prompts], ANSWER_TOKENS,
                           EVAL_BATCH)
    plain = [Anchor(i, p, r.strip()) for (i, p), r in zip(prompts, replies, strict=True) if r.strip()]
    tops = top_k(answer_logprobs(loaded, [a.example() for a in plain]), TOP_K)
    anchors = [Anchor(a.id, a.prompt, a.answer, t.ids.tolist(),
                      [[round(x, 4) for x in row] for row in t.logprobs.tolist()])
               for a, t in zip(plain, tops, strict=True)]
    cache_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(path, json.dumps({"model": str(model_dir), "anchors": [a.__dict__ for a in anchors]},
                                      ensure_ascii=False, indent=1))
    log.info("anchor bank answered by the base model", anchors=len(anchors), path=str(path))
    return anchors
