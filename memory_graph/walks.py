"""Random walks over a CSR snapshot of the memory graph, and "collision" sampling.

Walks are batched: many walkers advance together, one vectorised numpy step at a time, so the
cost per step is a few array operations shared by every walker instead of a Python-level
neighbour lookup per walker. A weighted neighbour is drawn by inverse-CDF: one global cumulative
sum over all edge weights (rows are contiguous in CSR, so each row is a slice of it), and one
binary search for all walkers at once, each kept inside its own row: a few steps over nearby
slots, so a step costs the same at a million memories as at a thousand (a search over the whole
array misses the cache at every level once it outgrows it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CSR:
    """An undirected weighted graph on nodes 0..n-1, both directions stored."""

    indptr: np.ndarray  # int64, n + 1
    indices: np.ndarray  # int64, the neighbour of each edge slot
    cumulative: np.ndarray  # float64, running sum of weights over all slots
    row_start: np.ndarray  # float64, cumulative weight before each row
    row_total: np.ndarray  # float64, each row's total weight (0 for an isolated node)
    search_steps: int = 0  # halvings that narrow the longest row to one slot

    @property
    def nodes(self) -> int:
        return len(self.indptr) - 1

    @property
    def slots(self) -> int:
        return len(self.indices)

    @classmethod
    def from_edges(cls, n: int, src: np.ndarray, dst: np.ndarray, weight: np.ndarray) -> CSR:
        """From undirected edges (each pair once); parallel edges between a pair add up."""
        import scipy.sparse as sp

        src, dst = np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64)
        weight = np.asarray(weight, dtype=np.float64)
        if len(weight) and not (weight > 0).all():
            raise ValueError("edge weights must be positive")
        rows = np.concatenate([src, dst])
        cols = np.concatenate([dst, src])
        matrix = sp.coo_matrix((np.concatenate([weight, weight]), (rows, cols)), shape=(n, n)).tocsr()
        matrix.sum_duplicates()
        return cls.from_scipy(matrix)

    @classmethod
    def from_scipy(cls, matrix) -> CSR:
        indptr = matrix.indptr.astype(np.int64)
        cumulative = np.cumsum(matrix.data, dtype=np.float64)
        padded = np.concatenate([[0.0], cumulative])
        row_start = padded[indptr[:-1]]
        row_total = padded[indptr[1:]] - row_start
        longest = int(np.diff(indptr).max(initial=0))
        return cls(indptr, matrix.indices.astype(np.int64), cumulative, row_start, row_total,
                   max(longest - 1, 0).bit_length())


def walk(csr: CSR, starts: np.ndarray, steps: int, restart: float, rng: np.random.Generator) -> np.ndarray:
    """Weighted walks with restart. Returns an (n_walkers, steps + 1) array of node indices;
    column 0 is the start. A walker at a node with no edges restarts."""
    starts = np.asarray(starts, dtype=np.int64)
    path = np.empty((len(starts), steps + 1), dtype=np.int64)
    path[:, 0] = starts
    current = starts.copy()
    for step in range(1, steps + 1):
        draws = rng.random((2, len(current)))
        total = csr.row_total[current]
        targets = csr.row_start[current] + draws[0] * total
        # The first slot of the row whose running sum passes the target (searchsorted's "right"),
        # or the row's last slot when rounding leaves none: the same draw as a global search.
        low, high = csr.indptr[current], np.maximum(csr.indptr[current + 1] - 1, csr.indptr[current])
        for _ in range(csr.search_steps):
            middle = (low + high) // 2
            right = csr.cumulative[np.minimum(middle, csr.slots - 1)] <= targets
            low, high = np.where(right, middle + 1, low), np.where(right, high, middle)
        nxt = csr.indices[np.minimum(low, max(csr.slots - 1, 0))]
        jump = (draws[1] < restart) | (total <= 0)
        current = np.where(jump, starts, nxt)
        path[:, step] = current
    return path


@dataclass(frozen=True)
class CollisionDraw:
    members: list[int]  # node indices; members[0] is where the walks started
    paths: list[list[int]]  # for each later member, the walked path from members[0] to it


def draw_collision(
    csr: CSR,
    vectors: np.ndarray,
    conversations: np.ndarray,
    start: int,
    rng: np.random.Generator,
    *,
    size: int,
    walkers: int,
    steps: int,
    restart: float,
    max_similarity: float,
) -> CollisionDraw | None:
    """Walk from `start`; keep memories the walks reach often (strongly connected) that are from a
    different conversation than every member so far, or far from each in meaning."""
    trajectories = walk(csr, np.full(walkers, start), steps, restart, rng)
    parent = {start: -1}
    visits: dict[int, int] = {}
    for row in trajectories.tolist():
        for before, after in zip(row, row[1:]):
            if after == start:
                continue  # a restart or a return: no new ground
            visits[after] = visits.get(after, 0) + 1
            parent.setdefault(after, before)  # first arrival: a real edge, so a real path back
    # Most visited first; ties broken at random (but reproducibly) so collisions vary.
    candidates = sorted(visits, key=lambda node: (-visits[node], rng.random()))
    members = [start]
    for node in candidates:
        if len(members) == size:
            break
        if all(conversations[node] != conversations[m] or float(vectors[node] @ vectors[m]) < max_similarity
               for m in members):
            members.append(node)
    if len(members) < 2:
        return None
    return CollisionDraw(members, [_path_to(parent, node) for node in members[1:]])


def _path_to(parent: dict[int, int], node: int) -> list[int]:
    path = [node]
    while parent[path[-1]] != -1:
        path.append(parent[path[-1]])
    return path[::-1]
