"""The evaluation suite, built from the memory graph: what every candidate is measured on.

- learning: the newest (trainable) exchanges asked again in other words — a question made of the
  logged question's content words, a wording no rehearsal uses, so the gate credits what was
  learned, not what was recited;
- retention: older exchanges, spread over time, asked the same way;
- held-out exchanges, chosen by content hash (so fixed at ingest, the same on every machine and in
  every round, and never trained on), cut into time slices in ingest order: forgetting over time;
- the shipped general probes, the anchor bank with the base's answers, and the fingerprint
  prompts (trainers/gate/metrics.py): damage.

The suite has a key, a hash of what is in it: the same weights on the same suite give the same
numbers, so evaluations are stored and reused per key (daemon/gate/evaluations.py). What is
measured on the shipped banks alone has a key of its own (`EvalSuite.general_key`) and is reused
while the memories change, as they do between nearly any two rounds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

from sqlite_utils import Database

from dreamd.daemon.dreaming.training_set import replay_example
from dreamd.trainers.anchors import Anchor, measured
from dreamd.trainers.examples import TrainingExample
from dreamd.trainers.gate.metrics import EvalSuite, ask
from dreamd.trainers.settings import EvalSettings
from dreamd.trainers.words import content_words

KEYWORDS_PER_QUESTION = 5


def is_held_out(message_sha256: str, percent: int) -> bool:
    """Held out by content: the same exchange is held out on every machine, in every round."""
    return int(message_sha256[:8], 16) % 100 < percent


def held_out_nodes(db: Database, percent: int) -> list[int]:
    """The memory nodes whose first message is held out, in ingest order."""
    rows = db.execute(
        "SELECT n.id, m.sha256 FROM memory_nodes n JOIN messages m ON m.id = n.first_message_id ORDER BY n.id"
    ).fetchall()
    return [node for node, sha in rows if is_held_out(sha, percent)]


def spread(count: int, wanted: int) -> list[int]:
    """`wanted` indices out of `count`, evenly spaced, the first and last always among them."""
    if count <= wanted:
        return list(range(count))
    return sorted({round(i * (count - 1) / (wanted - 1)) for i in range(wanted)}) if wanted > 1 else [count - 1]


def heldout_slices(db: Database, settings: EvalSettings) -> dict[str, list[TrainingExample]]:
    """Held-out exchanges in time slices of `slice_size`; at most `max_slices` of them, spread out."""
    nodes = held_out_nodes(db, settings.heldout_percent)
    chunks = [nodes[i:i + settings.slice_size] for i in range(0, len(nodes), settings.slice_size)]
    slices = {}
    for index in spread(len(chunks), settings.max_slices):
        examples = [replay_example(db, node, settings.history_messages) for node in chunks[index]]
        slices[f"slice-{index:03d}"] = [e for e in examples if e is not None]
    return {name: examples for name, examples in slices.items() if examples}


def reworded(example: TrainingExample) -> TrainingExample:
    """The exchange asked again in other words: its answer after a question made of its keywords."""
    question = next(m["content"] for m in reversed(example.messages) if m["role"] == "user")
    keywords = sorted(content_words(question), key=len, reverse=True)[:KEYWORDS_PER_QUESTION]
    return ask(f"Remind me what you told me about {', '.join(keywords) or 'that'}.", example.messages[-1]["content"],
               example.id.replace("replay:", "acquire:"))


def learning_and_retention(db: Database, settings: EvalSettings,
                           held_out: set[int]) -> tuple[list[TrainingExample], list[TrainingExample]]:
    """The newest `acquisition_count` trainable exchanges (learning) and `retention_count` of the
    older ones, evenly spread over time (retention), each reworded."""
    nodes = [n for (n,) in db.execute("SELECT id FROM memory_nodes ORDER BY id DESC").fetchall() if n not in held_out]
    examples = []
    for node in nodes:  # some nodes have no question or answer: skip them
        example = replay_example(db, node, 0)
        if example is not None:
            examples.append(example)
        if len(examples) == settings.acquisition_count and not settings.retention_count:
            break
    learning, older = examples[: settings.acquisition_count], examples[settings.acquisition_count :][::-1]
    retention = [older[i] for i in spread(len(older), settings.retention_count)] if settings.retention_count else []
    return ([reworded(e) for e in learning],
            [dataclasses.replace(reworded(e), id=e.id.replace("replay:", "retain:")) for e in retention])


def build_suite(db: Database, settings: EvalSettings, anchors: list[Anchor] = ()) -> tuple[EvalSuite, str]:
    """(suite, key): the key changes whenever anything in the suite does."""
    held_out = set(held_out_nodes(db, settings.heldout_percent))
    learning, retention = learning_and_retention(db, settings, held_out)
    suite = EvalSuite(
        heldout_slices=heldout_slices(db, settings),
        acquisition=learning,
        retention=retention,
        anchors=[a.example() for a in measured(list(anchors))],
        max_new_tokens=settings.max_new_tokens,
    )
    described = {
        "slices": {name: [e.id for e in exs] for name, exs in suite.heldout_slices.items()},
        "acquisition": [e.id for e in suite.acquisition],
        "retention": [e.id for e in suite.retention],
        "general": suite.general_key(),  # the shipped banks, and how they are measured
    }
    return suite, hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]
