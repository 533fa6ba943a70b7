"""Benchmark: batched CSR random walks against a straightforward walker over networkx.

A synthetic graph of 100,000 nodes and about 1,000,000 weighted undirected edges. Both walkers do
weighted steps with restart (p = 0.15). Ours advances a batch of walkers together over the CSR
snapshot; the baseline steps one walker at a time, asking networkx for the neighbours and their
weights at every step and drawing with random.choices. speedup = ours ÷ networkx, same run.

    .venv/bin/python tests/bench/bench_walks.py --json
"""

from __future__ import annotations

import argparse
import json
import random
import time

import numpy as np


def synthetic_edges(nodes: int, edges: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    src = rng.integers(0, nodes, int(edges * 1.05))
    dst = rng.integers(0, nodes, int(edges * 1.05))
    keep = src != dst
    low, high = np.minimum(src[keep], dst[keep]), np.maximum(src[keep], dst[keep])
    pairs = np.unique(low * nodes + high)[:edges]
    return pairs // nodes, pairs % nodes, rng.uniform(0.1, 1.0, len(pairs))


def networkx_walk(graph, start: int, steps: int, restart: float, rng: random.Random) -> list[int]:
    path, current = [start], start
    for _ in range(steps):
        neighbours = graph[current]
        if not neighbours or rng.random() < restart:
            current = start
        else:
            current = rng.choices(list(neighbours), weights=[d["weight"] for d in neighbours.values()])[0]
        path.append(current)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument("--nodes", type=int, default=100_000)
    parser.add_argument("--edges", type=int, default=1_000_000)
    parser.add_argument("--walkers", type=int, default=20_000)
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()

    import networkx as nx

    from dreamd.memory_graph.walks import CSR, walk

    src, dst, weight = synthetic_edges(args.nodes, args.edges)
    csr = CSR.from_edges(args.nodes, src, dst, weight)
    graph = nx.Graph()
    graph.add_nodes_from(range(args.nodes))
    graph.add_weighted_edges_from(zip(src.tolist(), dst.tolist(), weight.tolist()))

    rng = np.random.default_rng(1)
    starts = rng.integers(0, args.nodes, args.walkers)
    walk(csr, starts[:1000], 5, 0.15, rng)  # warm-up
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        walk(csr, starts, args.steps, 0.15, rng)
        best = min(best, time.perf_counter() - started)
    steps_per_s = args.walkers * args.steps / best

    py_rng = random.Random(1)
    nx_steps, started = 0, time.perf_counter()
    while time.perf_counter() - started < 3.0:
        networkx_walk(graph, int(py_rng.randrange(args.nodes)), args.steps, 0.15, py_rng)
        nx_steps += args.steps
    nx_steps_per_s = nx_steps / (time.perf_counter() - started)

    result = {"steps_per_s": round(steps_per_s), "networkx_steps_per_s": round(nx_steps_per_s),
              "speedup": round(steps_per_s / nx_steps_per_s, 1)}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"graph: {args.nodes} nodes, {graph.number_of_edges()} edges ({csr.slots} CSR slots)")
        print(f"CSR batched walks: {steps_per_s:,.0f} steps/s ({args.walkers} walkers x {args.steps} steps)")
        print(f"networkx walker:   {nx_steps_per_s:,.0f} steps/s")
        print(f"speedup {result['speedup']} (goal >= 20, and >= 1,000,000 steps/s)")


if __name__ == "__main__":
    main()
