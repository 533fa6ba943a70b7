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

Neighbourhood rehearsals (daemon/dreaming/neighbours.py) are anchors too, made per round: a
dream's question about a well-known thing instead of the memory's ("how many legs does the dog
have?"), held at the base's answer so a taught fact does not spill over onto its neighbours. Their
base answers are kept in a second file per base model (`NeighbourCache`), so a prompt is answered
once and a round can be rebuilt from its example ids.
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

    def example(self, kind: str = "anchor") -> TrainingExample:
        soft = SoftTargets(self.top_ids, self.top_logprobs) if self.top_ids else None
        return TrainingExample(f"{kind}:{self.id}", [{"role": "user", "content": self.prompt},
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


def answered_by(loaded, prompts: list[tuple[str, str]], answer_tokens: int = ANSWER_TOKENS) -> list[Anchor]:
    """(id, prompt) pairs answered greedily by `loaded`, with its top-k distribution at every answer
    token; a prompt answered with nothing is left out."""
    from dreamd.trainers.gate.metrics import EVAL_BATCH, answer_top_k
    from dreamd.trainers.generate import chat_replies

    if not prompts:
        return []
    # In the gate's wide batches: on CPU a generation step costs nearly the same for 16 rows or 64.
    replies = chat_replies(loaded, [[{"role": "user", "content": p}] for _i, p in prompts], answer_tokens,
                           EVAL_BATCH)
    plain = [Anchor(i, p, r.strip()) for (i, p), r in zip(prompts, replies, strict=True) if r.strip()]
    tops = answer_top_k(loaded, [a.example() for a in plain], TOP_K)
    return [Anchor(a.id, a.prompt, a.answer, t.ids.tolist(),
                   [[round(x, 4) for x in row] for row in t.logprobs.tolist()])
            for a, t in zip(plain, tops, strict=True)]


def base_anchors(model_dir: Path, cache_dir: Path, load_base) -> list[Anchor]:
    """The anchor bank with the base model's answers: read from the cache, or generated once with
    `load_base()` (called only then) and cached."""
    path = cache_path(cache_dir, model_dir)
    if path.exists():
        return [Anchor(**row) for row in json.loads(path.read_text("utf-8"))["anchors"]]
    anchors = answered_by(load_base(), anchor_prompts())
    cache_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(path, json.dumps({"model": str(model_dir), "anchors": [a.__dict__ for a in anchors]},
                                      ensure_ascii=False, indent=1))
    log.info("anchor bank answered by the base model", anchors=len(anchors), path=str(path))
    return anchors


# A neighbour's answer is held for its first sentence or two: where a taught fact would spill over.
NEIGHBOUR_TOKENS = 48
# Entries kept per base model, newest last: a round uses one per dream, and the oldest are only
# needed again to rebuild an old round (the experiment's arm e), never for the next one. Each is
# about 12 KB of JSON (48 tokens x top-16), so the file stays near 12 MB at most.
NEIGHBOURS_KEPT = 1024


class NeighbourCache:
    """The base model's answers to neighbourhood prompts, one JSON file per base model: a prompt is
    answered once (by `load_base()`, called only when one is missing), then read back."""

    def __init__(self, model_dir: Path, cache_dir: Path, load_base):
        key = hashlib.sha256(f"{model_fingerprint(model_dir)}\n{NEIGHBOUR_TOKENS}\n{TOP_K}".encode()).hexdigest()[:16]
        self.path = Path(cache_dir) / f"neighbours-{key}.json"
        self._load_base = load_base
        self._known: dict[str, Anchor] | None = None

    def known(self) -> dict[str, Anchor]:
        """Every cached answer by its id."""
        if self._known is None:
            rows = json.loads(self.path.read_text("utf-8"))["neighbours"] if self.path.exists() else []
            self._known = {row["id"]: Anchor(**row) for row in rows}
        return self._known

    def answers(self, prompts: list[tuple[str, str]]) -> list[Anchor]:
        """The base's answers to (id, prompt) pairs, in their order (a prompt the base answers with
        nothing is left out); missing ones are answered in one batch and cached."""
        known = self.known()
        missing = list(dict((i, (i, p)) for i, p in prompts if i not in known).values())
        if missing:
            answered = {a.id: a for a in answered_by(self._load_base(), missing, NEIGHBOUR_TOKENS)}
            for i, prompt in missing:  # an empty answer is kept too, so it is not asked again every round
                known[i] = answered.get(i, Anchor(i, prompt, ""))
            for old in list(known)[:max(0, len(known) - NEIGHBOURS_KEPT)]:
                del known[old]
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(self.path, json.dumps({"neighbours": [a.__dict__ for a in known.values()]},
                                                   ensure_ascii=False))
            log.info("neighbourhood prompts answered by the base model", new=len(missing), path=str(self.path))
        return [known[i] for i, _p in prompts if known.get(i) and known[i].answer]
