"""The in-memory view of the memory graph: networkx for the structure, numpy for the vectors.

Loaded from the database at start, then kept current: `add` after each of this process's commits,
`refresh` for what other processes committed (every ingest only ever adds nodes with larger ids
and edges touching them, so "everything above the largest id I know" is a complete delta).
Walks do not ask networkx at every step: `snapshot()` packs it into a CSR array once per change.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import numpy as np
from sqlite_utils import Database

from dreamd.memory_graph.database.store import blob_vector
from dreamd.memory_graph.settings import GraphSettings
from dreamd.memory_graph.walks import CSR, draw_collision


@dataclass(frozen=True)
class Collision:
    """2-4 memories far apart in meaning or origin, joined through the graph: a dream's material."""

    node_ids: list[int]
    texts: list[str]
    conversation_ids: list[int]
    paths: list[list[int]]  # node ids from node_ids[0] to each later member, along graph edges


class MemoryGraph:
    def __init__(self, dimension: int = 0):
        self.graph = nx.Graph()
        self.ids: list[int] = []
        self.index: dict[int, int] = {}
        self._vectors = np.zeros((0, dimension), dtype=np.float32)
        self._conversations = np.zeros(0, dtype=np.int64)
        self._snapshot: CSR | None = None

    # -- the vectors grow by doubling, so adding a batch is amortised O(batch) ---------------
    @property
    def vectors(self) -> np.ndarray:
        return self._vectors[: len(self.ids)]

    @property
    def conversations(self) -> np.ndarray:
        return self._conversations[: len(self.ids)]

    @property
    def max_id(self) -> int:
        return self.ids[-1] if self.ids else 0

    def add(self, nodes: list[tuple[int, int]], vectors: np.ndarray, edges: list[tuple[int, int, str, float]]) -> None:
        """Nodes as (id, conversation id) in increasing id order, their vectors, and new edges."""
        if nodes:
            vectors = np.asarray(vectors, dtype=np.float32)
            if self._vectors.shape[1] != vectors.shape[1]:
                if self.ids:
                    raise ValueError(f"vectors of dimension {vectors.shape[1]}; the graph has {self._vectors.shape[1]}")
                self._vectors = np.zeros((0, vectors.shape[1]), dtype=np.float32)
            needed = len(self.ids) + len(nodes)
            if needed > len(self._vectors):
                capacity = max(needed, 2 * len(self._vectors), 1024)
                self._vectors = _grown(self._vectors, capacity)
                self._conversations = _grown(self._conversations, capacity)
            at = len(self.ids)
            self._vectors[at:needed] = vectors
            self._conversations[at:needed] = [c for _, c in nodes]
            for node_id, conversation in nodes:
                self.index[node_id] = len(self.ids)
                self.ids.append(node_id)
                self.graph.add_node(node_id, conversation=conversation)
        for src, dst, kind, weight in edges:
            # One networkx edge per pair; a temporal and a semantic link between the same two
            # memories make a stronger tie, so their weights add up.
            data = self.graph.get_edge_data(src, dst)
            if data is None:
                self.graph.add_edge(src, dst, weight=weight, kinds={kind})
            elif kind not in data["kinds"]:
                data["weight"] += weight
                data["kinds"].add(kind)
        if nodes or edges:
            self._snapshot = None

    @classmethod
    def load(cls, db: Database) -> MemoryGraph:
        graph = cls()
        graph.refresh(db)
        return graph

    def refresh(self, db: Database) -> int:
        """Take in nodes and edges other processes committed since this view last saw the database."""
        known = self.max_id
        rows = db.execute(
            "SELECT n.id, n.conversation_id, e.vector FROM memory_nodes n JOIN embeddings e ON e.node_id = n.id "
            "WHERE n.id > ? ORDER BY n.id", (known,)
        ).fetchall()
        if not rows:
            return 0
        vectors = np.stack([blob_vector(blob) for _, _, blob in rows])
        edges = db.execute(
            "SELECT src, dst, kind, weight FROM edges WHERE dst > ?", (known,)  # src < dst
        ).fetchall()
        self.add([(node_id, conversation) for node_id, conversation, _ in rows], vectors, edges)
        return len(rows)

    def snapshot(self) -> CSR:
        """The CSR arrays walks run on, rebuilt only after the graph changed."""
        if self._snapshot is None:
            edges = list(self.graph.edges(data="weight"))
            src = np.fromiter((self.index[a] for a, _, _ in edges), dtype=np.int64, count=len(edges))
            dst = np.fromiter((self.index[b] for _, b, _ in edges), dtype=np.int64, count=len(edges))
            weight = np.fromiter((w for _, _, w in edges), dtype=np.float64, count=len(edges))
            self._snapshot = CSR.from_edges(len(self.ids), src, dst, weight)
        return self._snapshot

    def collisions(self, db: Database, count: int, seed: int, settings: GraphSettings) -> list[Collision]:
        """Up to `count` collisions, the same ones for the same seed and graph."""
        csr = self.snapshot()
        rng = np.random.default_rng(seed)
        connected = np.flatnonzero(csr.row_total > 0)
        found: list[Collision] = []
        for _ in range(count * 4):  # some starts find no partner; give up after a few tries each
            if len(found) == count or not len(connected):
                break
            draw = draw_collision(
                csr, self.vectors, self.conversations, int(rng.choice(connected)), rng,
                size=int(rng.integers(2, 5)), walkers=settings.collision_walkers,
                steps=settings.collision_walk_steps, restart=settings.restart_probability,
                max_similarity=settings.collision_max_similarity,
            )
            if draw is not None:
                found.append(self._collision(db, draw.members, draw.paths))
        return found

    def _collision(self, db: Database, members: list[int], paths: list[list[int]]) -> Collision:
        ids = [self.ids[m] for m in members]
        rows = dict(
            (row[0], row[1:]) for row in db.execute(
                f"SELECT id, text, conversation_id FROM memory_nodes WHERE id IN ({','.join('?' * len(ids))})", ids
            ).fetchall()
        )
        return Collision(ids, [rows[i][0] for i in ids], [rows[i][1] for i in ids],
                         [[self.ids[p] for p in path] for path in paths])

    def stats(self) -> dict:
        kinds: dict[str, int] = {}
        for _, _, data in self.graph.edges(data=True):
            for kind in data["kinds"]:
                kinds[kind] = kinds.get(kind, 0) + 1
        return {"nodes": self.graph.number_of_nodes(), "edges": self.graph.number_of_edges(), "edge_kinds": kinds}


def _grown(array: np.ndarray, capacity: int) -> np.ndarray:
    grown = np.zeros((capacity, *array.shape[1:]), dtype=array.dtype)
    grown[: len(array)] = array
    return grown
