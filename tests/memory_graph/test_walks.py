"""CSR walks and collision sampling (pure numpy; vectors from the test embedder or hand-made)."""

import numpy as np
import pytest

from dreamd.memory_graph.settings import GraphSettings
from dreamd.memory_graph.walks import CSR, draw_collision, walk


def star_with_weights():
    # Node 0 joined to 1, 2, 3 with weights 1, 2, 7; node 4 isolated.
    return CSR.from_edges(5, np.array([0, 0, 0]), np.array([1, 2, 3]), np.array([1.0, 2.0, 7.0]))


def test_neighbours_are_drawn_in_proportion_to_weight():
    rng = np.random.default_rng(0)
    paths = walk(star_with_weights(), np.zeros(200_000, dtype=np.int64), 1, restart=0.0, rng=rng)
    share = np.bincount(paths[:, 1], minlength=5)[1:4] / 200_000
    assert share == pytest.approx([0.1, 0.2, 0.7], abs=0.01)


def test_restart_and_isolated_nodes():
    csr = star_with_weights()
    rng = np.random.default_rng(1)
    # From a leaf the only move is back to 0; with restart 0.5 half the walkers jump to their start.
    paths = walk(csr, np.full(100_000, 3), 1, restart=0.5, rng=rng)
    assert np.mean(paths[:, 1] == 3) == pytest.approx(0.5, abs=0.01)
    assert set(np.unique(paths[:, 1])) == {0, 3}
    assert (walk(csr, np.array([4]), 5, restart=0.0, rng=rng) == 4).all()  # isolated: stays


def test_every_step_follows_an_edge_or_restarts():
    rng = np.random.default_rng(2)
    n = 300
    src, dst = rng.integers(0, n, 2000), rng.integers(0, n, 2000)
    keep = src != dst
    csr = CSR.from_edges(n, src[keep], dst[keep], rng.random(keep.sum()) + 0.1)
    starts = rng.integers(0, n, 64)
    paths = walk(csr, starts, 50, restart=0.2, rng=rng)
    for row, start in zip(paths, starts):
        for a, b in zip(row, row[1:]):
            neighbours = csr.indices[csr.indptr[a]:csr.indptr[a + 1]]
            assert b in neighbours or b == start


def test_walks_are_reproducible_from_a_seed():
    csr = star_with_weights()
    a = walk(csr, np.zeros(10, dtype=np.int64), 20, 0.1, np.random.default_rng(42))
    b = walk(csr, np.zeros(10, dtype=np.int64), 20, 0.1, np.random.default_rng(42))
    assert (a == b).all()


def two_topics_bridged():
    """Conversation 0: nodes 0-4 (one topic); conversation 1: nodes 5-9 (another); one bridge 4-5."""
    vectors = np.zeros((10, 4), dtype=np.float32)
    vectors[:5, 0] = 1.0
    vectors[5:, 1] = 1.0
    src = [0, 1, 2, 3, 4, 5, 6, 7, 8]
    dst = [1, 2, 3, 4, 5, 6, 7, 8, 9]
    csr = CSR.from_edges(10, np.array(src), np.array(dst), np.ones(9))
    return csr, vectors, np.array([0] * 5 + [1] * 5)


def test_a_collision_joins_distant_memories_along_real_edges():
    csr, vectors, conversations = two_topics_bridged()
    settings = GraphSettings()
    draw = draw_collision(csr, vectors, conversations, 2, np.random.default_rng(3), size=3, walkers=64, steps=32,
                          restart=0.1, max_similarity=settings.collision_max_similarity)
    assert draw is not None and 2 <= len(draw.members) <= 3
    # Same conversation and same meaning never collide: every later member is from conversation 1.
    assert all(conversations[m] == 1 for m in draw.members[1:])
    for member, path in zip(draw.members[1:], draw.paths):
        assert path[0] == 2 and path[-1] == member
        for a, b in zip(path, path[1:]):
            assert b in csr.indices[csr.indptr[a]:csr.indptr[a + 1]]
        assert 4 in path and 5 in path  # the only way across is the bridge


def test_no_collision_when_nothing_distinct_is_reachable():
    csr, vectors, conversations = two_topics_bridged()
    # Cut the bridge: from node 2 only its own conversation, all of one meaning, is reachable.
    cut = CSR.from_edges(10, np.array([0, 1, 2, 3, 5]), np.array([1, 2, 3, 4, 6]), np.ones(5))
    assert draw_collision(cut, vectors, conversations, 2, np.random.default_rng(0), size=2, walkers=16,
                          steps=16, restart=0.1, max_similarity=0.5) is None


def test_the_in_row_search_draws_what_a_global_search_draws():
    """walk() searches each walker's own row; the plain inverse-CDF over the whole cumulative array
    must pick the very same slots (isolated nodes, heavy rows and tiny weights included)."""
    rng = np.random.default_rng(9)
    n = 500
    src, dst = rng.integers(0, n - 20, 4000), rng.integers(0, n - 20, 4000)  # the last 20 stay isolated
    src[:300] = 7  # one heavy row
    keep = src != dst
    csr = CSR.from_edges(n, src[keep], dst[keep], rng.random(keep.sum()) ** 4 + 1e-9)
    starts = rng.integers(0, n, 256)
    ours = walk(csr, starts, 40, 0.1, np.random.default_rng(3))

    draws_rng, current = np.random.default_rng(3), starts.copy()
    for step in range(1, 41):
        draws = draws_rng.random((2, len(current)))
        total = csr.row_total[current]
        slot = np.searchsorted(csr.cumulative, csr.row_start[current] + draws[0] * total, side="right")
        slot = np.minimum(slot, csr.indptr[current + 1] - 1)
        current = np.where((draws[1] < 0.1) | (total <= 0), starts, csr.indices[np.maximum(slot, 0)])
        assert (ours[:, step] == current).all()
