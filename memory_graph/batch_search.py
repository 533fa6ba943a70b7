"""The semantic neighbours of a whole batch of files, searched at once before the first is written.

Ingest embeds a batch of files together, then writes each file in its own transaction. Searched
file by file, every new memory costs a pass over the stored vectors (the exact scan of a small
graph) or an index call of its own; searched together, the batch is one matrix product, or one
index call spread over every core. On 20,000 one-exchange files that search was most of what grew
with the store.

What a search made before the batch cannot have seen is exactly what the view takes in after it:
the batch's own earlier files, and whatever other processes commit meanwhile (the refresh inside
each file's transaction). `since` keeps those memories with their float32 vectors, and each file's
transaction scans them exactly beside the search's candidates and the file's own memories. The
three sets are disjoint, so every new memory keeps the same best k as a search of its own just
before its transaction (writer.py). If the view moves some other way (anything not taken in
here), the file searches on its own again.
"""

from __future__ import annotations

import numpy as np
from sqlite_utils import Database

from dreamd.memory_graph.graph import MemoryGraph


class BatchSearch:
    def __init__(self, found: list[tuple[np.ndarray, np.ndarray]], seen_max: int):
        self._found = found  # per file: (ids, similarities), each (its memories, k)
        self._seen_max = seen_max  # the view's highest id once everything below is taken in
        self._ids = np.zeros(0, dtype=np.int64)
        self._conversations = np.zeros(0, dtype=np.int64)
        self._vectors = np.zeros((0, 0), dtype=np.float32)

    @classmethod
    def run(cls, db: Database, graph: MemoryGraph, files: list[tuple[object, np.ndarray, np.ndarray]],
            count: int) -> BatchSearch:
        """`files`: (prepared, its vectors, its planned conversation ids) in the order they will be
        written. The view is refreshed first, as a file's own search would."""
        graph.refresh(db)
        vectors = [np.asarray(v, dtype=np.float32) for _p, v, _c in files]
        sizes = [len(v) for v in vectors]
        if sum(sizes):
            ids, similar = graph.nearest(db, np.concatenate([v for v in vectors if len(v)]),
                                         np.concatenate([c for _p, _v, c in files]), count)
        else:
            ids, similar = np.zeros((0, count), dtype=np.int64), np.zeros((0, count), dtype=np.float32)
        bounds = np.cumsum([0, *sizes])
        found = [(ids[a:b], similar[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
        return cls(found, graph.max_id)

    def current(self, graph: MemoryGraph) -> bool:
        """True while the view holds nothing above the search that was not taken in here."""
        return graph.max_id == self._seen_max

    def searched(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self._found[index]

    def took_in(self, graph: MemoryGraph, ids: np.ndarray, conversations: np.ndarray, vectors: np.ndarray) -> None:
        """Memories the view took in after the search (a file of the batch, or others' commits)."""
        if len(ids):
            vectors = np.asarray(vectors, dtype=np.float32)
            self._ids = np.concatenate([self._ids, np.asarray(ids, dtype=np.int64)])
            self._conversations = np.concatenate([self._conversations, np.asarray(conversations, dtype=np.int64)])
            self._vectors = np.concatenate([self._vectors, vectors]) if len(self._vectors) else vectors
        self._seen_max = graph.max_id

    def since(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids, conversations, vectors) of every memory taken in after the search."""
        return self._ids, self._conversations, self._vectors
