"""The memory graph as ingest and the walks need it, read from SQLite without networkx.

What a process holds grows gently with the graph: the sorted memory ids and their conversations
(16 bytes a memory); the approximate index when it ingests (about 0.6 KB a memory, int8); the
float32 vectors only while the graph is below `exact_below` (the exact scan), or when asked
(`vectors`, for analysis); the CSR arrays of the walks, built straight from the edges table on the
first collision after a change. networkx is for analysis only: `to_networkx(db)` builds one.

Kept current as before: `add` after this process's commits, `refresh` for what other processes
committed (every ingest only ever adds memories with larger ids and edges touching them, so
"everything above the largest id I know" is a complete delta).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlite_utils import Database

from dreamd.memory_graph.ann_index import AnnIndex
from dreamd.memory_graph.database.store import blob_vector
from dreamd.memory_graph.memories import nearest_others
from dreamd.memory_graph.settings import GraphSettings
from dreamd.memory_graph.walks import CSR, draw_collision

READ_ROWS = 200_000  # rows fetched from SQLite per step while loading
MAX_OWN_CONVERSATION = 4096  # the index is asked for at most this many extra candidates per query


@dataclass(frozen=True)
class Collision:
    """2-4 memories far apart in meaning or origin, joined through the graph: a dream's material."""

    node_ids: list[int]
    texts: list[str]
    conversation_ids: list[int]
    paths: list[list[int]]  # node ids from node_ids[0] to each later member, along graph edges


@dataclass(frozen=True)
class Delta:
    """Memories a refresh took in, in id order."""

    ids: np.ndarray
    conversations: np.ndarray
    vectors: np.ndarray


class MemoryGraph:
    def __init__(self, settings: GraphSettings | None = None):
        self.settings = settings or GraphSettings()
        self.ann: AnnIndex | None = None
        self._count = 0
        self._ids = np.zeros(0, dtype=np.int64)
        self._conversations = np.zeros(0, dtype=np.int64)
        self._per_conversation = np.zeros(0, dtype=np.int64)  # memories of each conversation id
        self._exact: np.ndarray | None = None  # float32 vectors, aligned with ids, while the exact scan is used
        self._analysis_vectors: np.ndarray | None = None
        self._snapshot: CSR | None = None
        self._db: Database | None = None  # the last database seen, for the lazily built views

    # -- what the view holds -----------------------------------------------------------------
    @property
    def ids(self) -> np.ndarray:
        return self._ids[: self._count]

    @property
    def conversations(self) -> np.ndarray:
        return self._conversations[: self._count]

    @property
    def max_id(self) -> int:
        return int(self._ids[self._count - 1]) if self._count else 0

    @property
    def index(self) -> _Positions:
        """id → position in `ids` (and in the CSR arrays)."""
        return _Positions(self.ids)

    @property
    def vectors(self) -> np.ndarray:
        """Every memory's float32 vector, aligned with `ids`: for analysis (1.5 GB at a million)."""
        if self._exact is not None and len(self._exact) >= self._count:
            return self._exact[: self._count]
        if self._analysis_vectors is None or len(self._analysis_vectors) != self._count:
            self._analysis_vectors = _vectors_of(self._require_db(), self.ids)
        return self._analysis_vectors

    # -- loading and keeping current ---------------------------------------------------------
    @classmethod
    def load(cls, db: Database, settings: GraphSettings | None = None, index: Path | None = None) -> MemoryGraph:
        """Ids and conversations from the database; with `index` (a folder, see ann_index.py) the
        approximate index is opened there, verified and brought up to date, for ingesting."""
        graph = cls(settings)
        graph._db = db
        while rows := db.execute("SELECT id, conversation_id FROM memory_nodes WHERE id > ? ORDER BY id LIMIT ?",
                                 (graph.max_id, READ_ROWS)).fetchall():
            pairs = np.array(rows, dtype=np.int64)
            graph._append(pairs[:, 0], pairs[:, 1], None)
        if index is not None:
            graph.ann = AnnIndex.open(index, db, graph.settings)
            if graph._count < graph.settings.exact_below:
                graph._exact = _vectors_of(db, graph.ids)
        graph.refresh(db)
        return graph

    def refresh(self, db: Database) -> Delta:
        """Take in the memories other processes committed since this view last saw the database."""
        self._db = db
        rows = db.execute(
            "SELECT n.id, n.conversation_id, e.vector FROM memory_nodes n JOIN embeddings e ON e.node_id = n.id "
            "WHERE n.id > ? ORDER BY n.id", (self.max_id,)
        ).fetchall()
        if not rows:
            return Delta(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32))
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        conversations = np.array([r[1] for r in rows], dtype=np.int64)
        vectors = np.stack([blob_vector(r[2]) for r in rows])
        self._append(ids, conversations, vectors)
        return Delta(ids, conversations, vectors)

    def add(self, nodes: list[tuple[int, int]], vectors: np.ndarray, edges: list[tuple[int, int, str, float]]) -> None:
        """Nodes as (id, conversation id) in increasing id order, their vectors, and their new edges
        (those live in the database; they only mark the walks' arrays stale). Nodes the view has
        already taken in are skipped, so adding after a commit that added them is harmless."""
        if nodes:
            pairs = np.array(nodes, dtype=np.int64).reshape(-1, 2)
            self._append(pairs[:, 0], pairs[:, 1], np.asarray(vectors, dtype=np.float32))
        if nodes or edges:
            self._snapshot = None
        if self.ann is not None:
            self.ann.maybe_save()

    def _append(self, ids: np.ndarray, conversations: np.ndarray, vectors: np.ndarray | None) -> None:
        fresh = ids > self.max_id
        ids, conversations = ids[fresh], conversations[fresh]
        vectors = vectors[fresh] if vectors is not None else None
        if not len(ids):
            return
        needed = self._count + len(ids)
        if needed > len(self._ids):
            capacity = max(needed, 2 * len(self._ids), 1024)
            self._ids, self._conversations = _grown(self._ids, capacity), _grown(self._conversations, capacity)
        self._ids[self._count:needed], self._conversations[self._count:needed] = ids, conversations
        if conversations.max() >= len(self._per_conversation):
            self._per_conversation = _grown(self._per_conversation, max(int(conversations.max()) + 1,
                                                                        2 * len(self._per_conversation)))
        np.add.at(self._per_conversation, conversations, 1)
        if self._exact is not None:
            if vectors is None or (self.ann is not None and needed >= self.settings.exact_below):
                self._exact = None  # from here on the index answers; reloaded only if asked
            else:
                if needed > len(self._exact):
                    self._exact = _grown(self._exact, max(needed, 2 * len(self._exact), 1024), vectors.shape[1])
                self._exact[self._count:needed] = vectors
        if self.ann is not None and vectors is not None:
            above = ids > self.ann.max_id
            self.ann.add(ids[above], vectors[above])
        self._count = needed
        self._snapshot, self._analysis_vectors = None, None

    # -- semantic neighbours of new memories ------------------------------------------------
    def nearest(self, db: Database, vectors: np.ndarray, conversations: np.ndarray,
                count: int) -> tuple[np.ndarray, np.ndarray]:
        """Each vector's `count` most similar memories in the view from other conversations, as
        (ids, exact similarities), best first, padded with -1 / -inf. A new conversation is any id
        the view has no memory of (a negative one will do)."""
        vectors = np.asarray(vectors, dtype=np.float32)
        conversations = np.asarray(conversations, dtype=np.int64)
        if self.ann is None or self._count < self.settings.exact_below:
            if self._exact is None or len(self._exact) < self._count:
                self._exact = _vectors_of(db, self.ids)
            return nearest_others(vectors, conversations, self.ids, self._exact[: self._count],
                                  self.conversations, count)
        return self._nearest_approximate(db, vectors, conversations, count)

    def _nearest_approximate(self, db: Database, vectors: np.ndarray, conversations: np.ndarray,
                             count: int) -> tuple[np.ndarray, np.ndarray]:
        # A memory's own conversation is excluded after the search, so ask for that many more.
        own = np.zeros(len(conversations), dtype=np.int64)
        known = (conversations >= 0) & (conversations < len(self._per_conversation))
        own[known] = self._per_conversation[conversations[known]]
        extra = min(int(own.max(initial=0)), MAX_OWN_CONVERSATION)
        want = min(self._count, max(count, self.settings.index_candidates) + extra)
        keys = self.ann.search(vectors, want)
        where = np.minimum(np.searchsorted(self.ids, keys), self._count - 1)
        valid = (keys >= 0) & (self.ids[where] == keys) & (self.conversations[where] != conversations[:, None])
        # Re-rank with the exact float32 vectors: the index's int8 ones only choose the candidates.
        unique = np.unique(keys[valid])
        exact = _vectors_of(db, unique)
        similar = np.full(keys.shape, -np.inf, dtype=np.float32)
        rows = np.searchsorted(unique, keys).clip(0, max(len(unique) - 1, 0))
        for start in range(0, len(keys), 256):
            block = slice(start, start + 256)
            if len(unique):
                scores = np.einsum("qd,qcd->qc", vectors[block], exact[rows[block]])
                similar[block] = np.where(valid[block], scores, -np.inf)
        keys = np.where(valid, keys, -1)
        order = np.lexsort((keys, -similar), axis=1)[:, :count]  # ties: the older memory, as the exact scan
        found = np.take_along_axis(keys, order, axis=1)
        similar = np.take_along_axis(similar, order, axis=1)
        pad = count - found.shape[1]
        if pad > 0:
            found = np.pad(found, ((0, 0), (0, pad)), constant_values=-1)
            similar = np.pad(similar, ((0, 0), (0, pad)), constant_values=-np.inf)
        return found, similar

    # -- walks and collisions --------------------------------------------------------------
    def snapshot(self) -> CSR:
        """The CSR arrays walks run on, read from the edges table; rebuilt only after a change."""
        if self._snapshot is None:
            db = self._require_db()
            pairs, weights = [np.zeros((0, 2), dtype=np.int64)], [np.zeros(0)]
            cursor = db.execute("SELECT src, dst, weight FROM edges")
            while rows := cursor.fetchmany(READ_ROWS):
                pairs.append(np.array([r[:2] for r in rows], dtype=np.int64))
                weights.append(np.fromiter((r[2] for r in rows), dtype=np.float64, count=len(rows)))
            src, dst = np.concatenate(pairs).T
            weight = np.concatenate(weights)
            known = dst <= self.max_id  # src < dst; edges of memories the view has not taken in yet wait
            self._snapshot = CSR.from_edges(self._count, np.searchsorted(self.ids, src[known]),
                                            np.searchsorted(self.ids, dst[known]), weight[known])
        return self._snapshot

    def collisions(self, db: Database, count: int, seed: int, settings: GraphSettings,
                   prefer: np.ndarray | None = None, prefer_share: float = 0.0) -> list[Collision]:
        """Up to `count` collisions, the same ones for the same seed and graph. With `prefer`
        (memory ids), a `prefer_share` of the starts is drawn among those (while some are connected
        and not every connected memory is one of them: otherwise the draw is as without)."""
        self._db = db
        csr = self.snapshot()
        rng = np.random.default_rng(seed)
        connected = np.flatnonzero(csr.row_total > 0)
        preferred = np.zeros(0, dtype=np.int64)
        if prefer is not None and len(prefer) and prefer_share > 0:
            where = np.searchsorted(self.ids, prefer).clip(0, max(self._count - 1, 0))
            rows = where[self.ids[where] == prefer]
            preferred = np.intersect1d(rows, connected)
            if len(preferred) == len(connected):
                preferred = preferred[:0]

        def start() -> int:
            if len(preferred) and rng.random() < prefer_share:
                return int(rng.choice(preferred))
            return int(rng.choice(connected))
        vectors = self._exact[: self._count] if self._exact is not None and len(self._exact) >= self._count \
            else _VectorLookup(db, self.ids)
        found: list[Collision] = []
        for _ in range(count * 4):  # some starts find no partner; give up after a few tries each
            if len(found) == count or not len(connected):
                break
            draw = draw_collision(
                csr, vectors, self.conversations, start(), rng,
                size=int(rng.integers(2, 5)), walkers=settings.collision_walkers,
                steps=settings.collision_walk_steps, restart=settings.restart_probability,
                max_similarity=settings.collision_max_similarity,
            )
            if draw is not None:
                found.append(self._collision(db, draw.members, draw.paths))
        return found

    def _collision(self, db: Database, members: list[int], paths: list[list[int]]) -> Collision:
        ids = [int(self.ids[m]) for m in members]
        rows = dict(
            (row[0], row[1:]) for row in db.execute(
                f"SELECT id, text, conversation_id FROM memory_nodes WHERE id IN ({','.join('?' * len(ids))})", ids
            ).fetchall()
        )
        return Collision(ids, [rows[i][0] for i in ids], [rows[i][1] for i in ids],
                         [[int(self.ids[p]) for p in path] for path in paths])

    # -- reports and analysis --------------------------------------------------------------
    def stats(self) -> dict:
        """Memories in the view; edges (pairs, however many kinds join them) and edges per kind."""
        db = self._require_db()
        kinds = dict(db.execute("SELECT kind, count(*) FROM edges GROUP BY kind").fetchall())
        pairs = db.execute("SELECT count(*) FROM (SELECT DISTINCT src, dst FROM edges)").fetchone()[0]
        return {"nodes": self._count, "edges": pairs, "edge_kinds": kinds}

    def to_networkx(self, db: Database | None = None):
        """The graph as a networkx.Graph (nodes carry `conversation`; one edge per pair, its weight
        the sum over kinds, `kinds` the set), for analysis: memory-hungry at scale."""
        import networkx as nx

        db = db or self._require_db()
        graph = nx.Graph()
        graph.add_nodes_from((int(i), {"conversation": int(c)}) for i, c in zip(self.ids, self.conversations))
        for src, dst, kind, weight in db.execute("SELECT src, dst, kind, weight FROM edges WHERE dst <= ?",
                                                 (self.max_id,)):
            data = graph.get_edge_data(src, dst)
            if data is None:
                graph.add_edge(src, dst, weight=weight, kinds={kind})
            else:
                data["weight"] += weight
                data["kinds"].add(kind)
        return graph

    def _require_db(self) -> Database:
        if self._db is None:
            raise RuntimeError("the graph has not seen a database yet: load or refresh it first")
        return self._db


class _Positions:
    """A read-only mapping id → position over sorted ids, without a million-entry dict."""

    def __init__(self, ids: np.ndarray):
        self._ids = ids

    def __getitem__(self, node_id: int) -> int:
        at = int(np.searchsorted(self._ids, node_id))
        if at >= len(self._ids) or self._ids[at] != node_id:
            raise KeyError(node_id)
        return at

    def __contains__(self, node_id: object) -> bool:
        try:
            self[node_id]  # type: ignore[index]
        except (KeyError, TypeError):
            return False
        return True

    def __len__(self) -> int:
        return len(self._ids)


class _VectorLookup:
    """`vectors[position]` for the few memories a collision compares, read from SQLite on demand."""

    def __init__(self, db: Database, ids: np.ndarray):
        self._db, self._ids, self._cache = db, ids, {}

    def __getitem__(self, position: int) -> np.ndarray:
        if position not in self._cache:
            self._cache[position] = _vectors_of(self._db, self._ids[[position]])[0]
        return self._cache[position]


def _vectors_of(db: Database, ids: np.ndarray) -> np.ndarray:
    """The float32 vectors of `ids` (sorted, all stored), in that order."""
    ids = np.asarray(ids, dtype=np.int64)
    found: dict[int, np.ndarray] = {}
    if len(ids) > 2000 and ids[-1] - ids[0] < 2 * len(ids):  # dense: one range scan beats IN lists
        for node_id, blob in db.execute("SELECT node_id, vector FROM embeddings WHERE node_id BETWEEN ? AND ?",
                                        (int(ids[0]), int(ids[-1]))):
            found[node_id] = blob
    else:
        for start in range(0, len(ids), 500):  # SQLite's limit on bound parameters
            chunk = [int(i) for i in ids[start:start + 500]]
            found.update(db.execute(f"SELECT node_id, vector FROM embeddings WHERE node_id IN "
                                    f"({','.join('?' * len(chunk))})", chunk).fetchall())
    if not len(ids):
        return np.zeros((0, 0), dtype=np.float32)
    return np.stack([blob_vector(found[int(i)]) for i in ids])


def _grown(array: np.ndarray, capacity: int, width: int | None = None) -> np.ndarray:
    grown = np.zeros((capacity, *(array.shape[1:] if width is None else (width,))), dtype=array.dtype)
    if len(array):
        grown[: len(array)] = array
    return grown
