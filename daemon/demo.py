"""The demo job: as much of the dream loop as exists, run on the bundled sample logs.

Each step prints what it did. Today: prepare the embedded model (converting it on first use),
embed every message of the samples, find for each memory its closest memory in another
conversation (the "collisions" dreams will be made of), and ask the model a question whose
answer is only in the logs, with and without that memory in its context.
"""

from __future__ import annotations

import json
import time
from importlib import resources
from typing import Callable

import numpy as np

from dreamd.daemon.config import Config
from dreamd.daemon.state_dir import StateLayout
from dreamd.memory_graph.embedder import Embedder
from dreamd.trainers.generate import chat_reply
from dreamd.trainers.model_store import load_model

SAMPLE_FILE = "team_chats.jsonl"
QUESTION = "What is the name of our internal metrics dashboard?"


def sample_conversations() -> list[list[dict]]:
    text = resources.files("dreamd.memory_graph").joinpath("samples", SAMPLE_FILE).read_text("utf-8")
    return [json.loads(line)["messages"] for line in text.splitlines() if line.strip()]


def run_demo(config: Config, layout: StateLayout, say: Callable[[str], None]) -> dict:
    layout.ensure()
    started = time.monotonic()
    loaded = load_model(config.model, layout.models)
    say(f"model: {loaded.directory.name} loaded from {loaded.directory} in {time.monotonic() - started:.1f} s "
        f"on {loaded.model.device}")

    conversations = sample_conversations()
    memories = [(ci, m["content"]) for ci, conv in enumerate(conversations) for m in conv]
    embedder = Embedder(config.embedder)
    started = time.monotonic()
    vectors = embedder.encode([text for _, text in memories])
    embed_seconds = time.monotonic() - started
    say(f"memories: embedded {len(memories)} messages from {len(conversations)} conversations "
        f"({vectors.shape[1]} dimensions) in {embed_seconds:.2f} s")

    collisions = closest_across_conversations(memories, vectors)
    for a, b, similarity in collisions[:3]:
        say(f"collision ({similarity:.2f}): {_short(memories[a][1])!r} <-> {_short(memories[b][1])!r}")

    memory = _best_memory_for(QUESTION, memories, vectors, embedder)
    plain = chat_reply(loaded, [{"role": "user", "content": QUESTION}], max_new_tokens=40)
    recalled = chat_reply(
        loaded,
        [
            {"role": "system", "content": f"Answer using this note from earlier conversations: {memory}"},
            {"role": "user", "content": QUESTION},
        ],
        max_new_tokens=40,
    )
    say(f"ask: {QUESTION}")
    say(f"  from its weights alone: {plain}")
    say(f"  with the memory in context: {recalled}")
    return {
        "model_dir": str(loaded.directory),
        "conversations": len(conversations),
        "memories": len(memories),
        "embed_msgs_per_s": round(len(memories) / max(embed_seconds, 1e-9), 1),
        "top_collision_similarity": round(collisions[0][2], 3) if collisions else None,
        "answer_without_memory": plain,
        "answer_with_memory": recalled,
    }


def closest_across_conversations(memories, vectors: np.ndarray) -> list[tuple[int, int, float]]:
    """For each memory, its most similar memory from another conversation; best pairs first."""
    conversation = np.array([ci for ci, _ in memories])
    similarity = vectors @ vectors.T
    similarity[conversation[:, None] == conversation[None, :]] = -np.inf
    best = similarity.argmax(axis=1)
    pairs = {tuple(sorted((i, int(j)))): float(similarity[i, j]) for i, j in enumerate(best)}
    return sorted(((a, b, s) for (a, b), s in pairs.items()), key=lambda p: -p[2])


def _best_memory_for(question, memories, vectors, embedder) -> str:
    scores = vectors @ embedder.encode([question])[0]
    return memories[int(scores.argmax())][1]


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
