"""A cheap deterministic embedder for unit tests of the logic *around* embedding (inbox, store,
graph, walks). It is not a sentence model: texts sharing words get similar vectors, nothing more.
Integration tests and the benchmarks use the real all-MiniLM-L6-v2."""

from __future__ import annotations

import hashlib
import re

import numpy as np

WORD = re.compile(r"[a-z0-9]+")


class HashEmbedder:
    name = "hash-embedder-test"

    def __init__(self, dimension: int = 32):
        self.dimension = dimension
        self.calls = 0

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in WORD.findall(text.lower()):
                digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
                out[row, int.from_bytes(digest[:4], "little") % self.dimension] += 1.0 if digest[4] & 1 else -1.0
            norm = np.linalg.norm(out[row])
            out[row] = out[row] / norm if norm else np.eye(self.dimension, dtype=np.float32)[0]
        return out
