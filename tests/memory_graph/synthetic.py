"""A memory store built straight into SQLite, no embedder: for the scale tests and the benchmark.

Seeded and clustered, so that neighbours mean something: every memory belongs to one of n/100
clusters (a random unit-normal centre plus as much noise again, normalised: two members of a
cluster have cosine about 0.5, strangers about 0) and to a conversation of `per_conversation`
consecutive memories. Edges as ingest makes them, about eight a memory: temporal and
same-conversation along each conversation (window 4), and `semantic` links to random members of
the same cluster in other conversations, weighted by their cosine.

Also small chat files and an embedder for tests that ingest through the inbox, where the exact scan
and the index must be compared edge for edge.
"""

from __future__ import annotations

import json
import random
import zlib
from pathlib import Path

import numpy as np

from dreamd.memory_graph.database.store import open_store, vector_blob

CHUNK = 20_000


def clustered_vectors(n: int, dimension: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unit vectors, cluster of each, cluster centres), the same for the same arguments."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(n // 100, 1), dimension)).astype(np.float32)
    labels = rng.integers(0, len(centres), n)
    vectors = np.empty((n, dimension), dtype=np.float32)
    for start in range(0, n, CHUNK):
        part = centres[labels[start:start + CHUNK]]
        part += rng.standard_normal(part.shape, dtype=np.float32)
        vectors[start:start + CHUNK] = part / np.linalg.norm(part, axis=1, keepdims=True)
    return vectors, labels, centres


def queries_like(centres: np.ndarray, count: int, seed: int) -> np.ndarray:
    """New vectors from the same clusters (as new memories would be), not in the store."""
    rng = np.random.default_rng(seed)
    part = centres[rng.integers(0, len(centres), count)] + rng.standard_normal((count, centres.shape[1]),
                                                                                  dtype=np.float32)
    return part / np.linalg.norm(part, axis=1, keepdims=True)


def build_store(path: Path, vectors: np.ndarray, labels: np.ndarray, seed: int, per_conversation: int = 10,
                window: int = 4, semantic: int = 4, first: int = 0) -> None:
    """Write memories first+1..first+n (with their messages, conversations and edges) into the
    database at `path` (new, or built here before with the memories up to `first`)."""
    rng = np.random.default_rng(seed + 1)
    n = len(vectors)
    members = np.argsort(labels, kind="stable")
    starts = np.searchsorted(labels[members], np.arange(labels.max() + 2))
    db = open_store(path)
    conn = db.conn
    # A throwaway build, consistent by construction (semantic edges reach memories of later chunks,
    # which deferred foreign keys would check by scanning): the store's own pragmas return on reopen.
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA foreign_keys = OFF")
    conn.execute("BEGIN")
    conn.execute("INSERT OR IGNORE INTO sources (id, sha256, name, format, bytes, conversations, messages, "
                 "duplicate_messages, skipped, skip_reasons, ingested_at) VALUES (1, 'synthetic', 'synthetic', "
                 "'openai', 0, ?, ?, 0, 0, '[]', 0)", ((n + per_conversation - 1) // per_conversation, n))
    conn.executemany("INSERT OR IGNORE INTO conversations (id, key, source_id, position) VALUES (?, ?, 1, '')",
                     ((c + 1, f"synthetic:{c}", ) for c in range(first // per_conversation,
                                                                 (first + n - 1) // per_conversation + 1)))
    for start in range(first, first + n, CHUNK):
        rows = range(start, min(start + CHUNK, first + n))
        conn.executemany(
            "INSERT INTO messages (id, sha256, conversation_id, source_id, seq, role, text, position) "
            "VALUES (?, ?, ?, 1, ?, 'user', ?, '')",
            ((i + 1, f"{i:064x}", i // per_conversation + 1, i % per_conversation,
              f"memory {i} of cluster {labels[i - first]}") for i in rows))
        conn.executemany(
            "INSERT INTO memory_nodes (id, conversation_id, first_message_id, last_message_id, text) "
            "VALUES (?, ?, ?, ?, ?)",
            ((i + 1, i // per_conversation + 1, i + 1, i + 1, f"memory {i} of cluster {labels[i - first]}")
             for i in rows))
        conn.executemany("INSERT INTO embeddings (node_id, model, dimension, vector) VALUES (?, 'synthetic', ?, ?)",
                         ((i + 1, vectors.shape[1], vector_blob(vectors[i - first])) for i in rows))
        conn.executemany("INSERT OR IGNORE INTO edges (src, dst, kind, weight) VALUES (?, ?, ?, ?)",
                         _edges(rows, first, vectors, labels, members, starts, rng, per_conversation, window,
                                semantic))
    conn.execute("COMMIT")
    db.close()


def _edges(rows: range, first: int, vectors, labels, members, starts, rng, per_conversation: int, window: int,
           semantic: int):
    for i in rows:
        for distance in range(1, window + 1):
            j = i - distance
            if j < 0 or j // per_conversation != i // per_conversation:
                break
            yield (j + 1, i + 1, "temporal", 1.0) if distance == 1 else (j + 1, i + 1, "same_conversation",
                                                                         0.5 / distance)
    # Semantic: random members of the same cluster from other conversations, vectorised per chunk.
    index = np.array(rows) - first
    low, high = starts[labels[index]], starts[labels[index] + 1]
    picks = members[low[:, None] + (rng.random((len(index), semantic)) * (high - low)[:, None]).astype(np.int64)]
    weights = np.einsum("nd,nkd->nk", vectors[index], vectors[picks])
    for i, others, values in zip((index + first).tolist(), (picks + first).tolist(), weights.tolist()):
        for j, weight in zip(others, values):
            if j // per_conversation != i // per_conversation and weight > 0:
                yield (min(i, j) + 1, max(i, j) + 1, "semantic", weight)


VOCABULARY = [f"w{n}" for n in range(600)]


def chat_files(folder: Path, batch: int, files: int = 4) -> list[Path]:
    """Seeded chats, each on a topic (a subset of a made-up vocabulary) that files share, so semantic
    edges form across them; varied enough that two exchanges are never equally similar to a third
    (ties would let the exact scan and the index pick different, equally good, neighbours)."""
    rng = random.Random(batch)
    topics = [random.Random(t).sample(VOCABULARY, 40) for t in range(8)]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(files):
        lines = []
        for _ in range(5):
            topic = rng.choice(topics)
            messages = []
            for _turn in range(2):
                for role in ("user", "assistant"):
                    words = rng.sample(topic, 8) + rng.sample(VOCABULARY, 3)
                    messages.append({"role": role, "content": " ".join(words)})
            lines.append(json.dumps({"messages": messages}))
        path = folder / f"batch{batch}-{index}.jsonl"
        path.write_text("\n".join(lines) + "\n")
        paths.append(path)
    return paths


class WordEmbedder:
    """Each word a fixed random direction, a text their normalised sum: real-valued, so ties are
    as rare as with a real embedder (the hashing test embedder's integer counts tie often)."""

    name, dimension = "word-embedder-test", 64

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                out[row] += np.random.default_rng(zlib.crc32(word.encode())).standard_normal(self.dimension)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def racing_writers(tmp_path: Path, settings, embedder):
    """Two ingesters on one database (ours, and theirs with its own inbox and connection), and
    `race()`: from then on our next search is followed, once, by theirs committing everything in
    their inbox. Returns (ours, theirs, raced, race): `raced` gets the count they ingested."""
    from dreamd.daemon.service.state_dir import StateLayout
    from dreamd.memory_graph.database.store import connect
    from dreamd.memory_graph.ingest import Ingester
    from dreamd.memory_graph.settings import InboxSettings

    layout = StateLayout(tmp_path / "state").ensure()
    ours = Ingester(layout.inbox, layout.database, embedder, InboxSettings(stable_seconds=0.0), settings)
    theirs = Ingester(tmp_path / "their-inbox", layout.database, embedder, InboxSettings(stable_seconds=0.0),
                      settings, db=connect(layout.database))
    search, raced = ours.graph.nearest, []

    def search_then_another_writer_commits(*args, **kwargs):
        found = search(*args, **kwargs)
        if not raced:  # once, right after our search: they commit all their files in between
            raced.append(theirs.drain().ingested)
        return found

    def race() -> None:
        ours.graph.nearest = search_then_another_writer_commits

    return ours, theirs, raced, race
