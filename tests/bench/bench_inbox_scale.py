"""Benchmark: does the inbox drain in time linear in the number of files? 2,000 against 20,000.

Each file is a small chat (one exchange, two messages) and every file is called
`conversations.json`, as exports from one tool are: they reach the inbox through `Inbox.drop` (what
`dreamctl ingest` does), so every name collides in new/ and again in done/, the case that was
quadratic. Timed separately: the drops, and the ingester draining the backlog (claim, parse,
embed, commit with synchronous=FULL, move to done/). ratio_20k_vs_2k = per-file drain throughput
at 20,000 ÷ at 2,000 (goal ≥ 0.8); the same for the drops. The 2,000-file drain lasts two or
three seconds, so one fsync stall moves it by a quarter (measured: 674 to 892 files/s on one quiet
machine); it runs `--base-runs` times (3) in fresh state dirs and its median is the baseline.

The embedder is the tests' HashEmbedder at all-MiniLM-L6-v2's dimension (384) unless --real-embedder
is given: a real embedder costs a constant ~5 ms a file at either size, which would only dilute
what is measured here (how the inbox, the database and the graph view scale). The graph's kNN
edges are made as configured (GraphSettings defaults) unless --knn-k says otherwise: `--knn-k 0`
measures the inbox and the database alone, without the nearest-neighbour search.

    .venv/bin/python tests/bench/bench_inbox_scale.py --json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def chat(index: int) -> str:
    return json.dumps({"messages": [
        {"role": "user", "content": f"Question {index}: how do I rotate the logs of service {index % 97}?"},
        {"role": "assistant", "content": f"Answer {index}: use logrotate with a weekly rule for unit {index % 89}."}]})


def run(files: int, work: Path, real_embedder: bool, graph_overrides: dict) -> dict:
    from dreamd.daemon.service.state_dir import StateLayout
    from dreamd.memory_graph.ingest import Ingester
    from dreamd.memory_graph.settings import EmbedderSettings, GraphSettings, InboxSettings
    from tests.helpers.fakes import HashEmbedder

    if real_embedder:
        from dreamd.memory_graph.embedder import Embedder

        embedder = Embedder(EmbedderSettings())
    else:
        embedder = HashEmbedder(dimension=384)
    layout = StateLayout(work / f"state-{files}").ensure()
    sources = work / f"sources-{files}"
    for index in range(files):  # one folder per export, each holding its conversations.json
        folder = sources / f"{index:05d}"
        folder.mkdir(parents=True)
        (folder / "conversations.json").write_text(chat(index))
    graph = GraphSettings(**graph_overrides)
    ingester = Ingester(layout.inbox, layout.database, embedder, InboxSettings(stable_seconds=0.0), graph)
    started = time.perf_counter()
    for index in range(files):
        ingester.inbox.drop(sources / f"{index:05d}" / "conversations.json")
    dropped = time.perf_counter() - started
    started = time.perf_counter()
    report = ingester.drain()
    drained = time.perf_counter() - started
    done = len(list(layout.inbox_folder("done").iterdir()))
    stored = ingester.db.execute("SELECT count(*) FROM sources").fetchone()[0]
    ingester.db.close()
    assert report.ingested == done == stored == files, (report.to_dict(), done, stored)  # each exactly once
    return {"files": files, "drop_s": dropped, "drain_s": drained}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument("--files", type=int, default=20000)
    parser.add_argument("--base", type=int, default=2000, help="the smaller run the ratio compares with")
    parser.add_argument("--base-runs", type=int, default=3, help="runs of the smaller size; their median is the base")
    parser.add_argument("--real-embedder", action="store_true", help="embed with the real all-MiniLM-L6-v2")
    parser.add_argument("--knn-k", type=int, default=None, help="semantic edges per memory (default: the setting's)")
    parser.add_argument("--exact-below", type=int, default=None,
                        help="graph size below which the kNN is an exact scan (default: the setting's)")
    args = parser.parse_args()

    from dreamd.daemon.service.logs import configure_logging

    configure_logging("console", "warning")
    overrides = {k: v for k, v in (("knn_k", args.knn_k), ("exact_below", args.exact_below)) if v is not None}
    with tempfile.TemporaryDirectory(prefix="bench-inbox-") as tmp:
        smalls = [run(args.base, Path(tmp) / f"base-{n}", args.real_embedder, overrides)
                  for n in range(args.base_runs)]
        large = run(args.files, Path(tmp), args.real_embedder, overrides)
    small = sorted(smalls, key=lambda r: r["drain_s"])[len(smalls) // 2]
    per_file = {name: {"drop": r["files"] / r["drop_s"], "drain": r["files"] / r["drain_s"]}
                for name, r in (("small", small), ("large", large))}
    result = {
        "files": args.files,
        "files_per_s": round(per_file["large"]["drain"], 1),
        "ratio_20k_vs_2k": round(per_file["large"]["drain"] / per_file["small"]["drain"], 3),
        "base_files": args.base,
        "base_files_per_s": round(per_file["small"]["drain"], 1),
        "base_runs_files_per_s": [round(r["files"] / r["drain_s"], 1) for r in smalls],
        "drop_files_per_s": round(per_file["large"]["drop"], 1),
        "drop_ratio": round(per_file["large"]["drop"] / per_file["small"]["drop"], 3),
        "embedder": "all-MiniLM-L6-v2" if args.real_embedder else "hash-384",
        "knn_k": args.knn_k if args.knn_k is not None else "default",
        "exact_below": args.exact_below if args.exact_below is not None else "default",
    }
    if args.json:
        print(json.dumps(result))
    else:
        for name, r in (("base", small), ("large", large)):
            print(f"{name}: {r['files']} files, drop {r['drop_s']:.1f} s, drain {r['drain_s']:.1f} s")
        print(f"per-file drain throughput {args.files} vs {args.base}: ratio {result['ratio_20k_vs_2k']} (goal >= 0.8)")


if __name__ == "__main__":
    main()
