"""Benchmark: the memory graph and the daemon at a million memories. Prints one JSON line.

Builds two stores straight into SQLite (tests/memory_graph/synthetic.py: seeded clustered
384-dimensional unit vectors, about eight edges a memory, no embedder), one of 10,000 memories and
one of `--memories` (1,000,000), and the approximate index of each through the daemon's own
recovery path (a store without an index file gets one built at open). Then, in the same run:

- knn_recall: the index's top 8 (re-ranked exactly, as ingest uses it) against the exact scan,
  for 1,000 new vectors from the same clusters;
- ingest_ratio_1m: 2,000 real messages (bench_ingest's synthetic chat) drained through the inbox
  with the real embedder (loaded once, warm) at 1M, in messages/s, over the same at 10k. The
  Ingester is opened (graph ids + index loaded and verified) before the clock starts: its open
  time is reported apart (ingester_open_*_s);
- collision_ratio_1m: collisions sampled per second at 1M over at 10k, on a freshly loaded graph
  whose walk arrays are built before the clock starts (graph_load_1m_s and csr_build_1m_s apart);
- start_to_ready_s: the real `dreamd` on the 1M state dir, start to READY=1; status_s: the wall time
  of `dreamctl status --json` (a new process) against it; then 2,000 more messages are dropped into
  its inbox and ingested by it (daemon_ingest_s, which includes loading the embedder and opening
  the index in the daemon); daemon_peak_rss_gb: the daemon's VmHWM after all of it.

    nice -n 15 .venv/bin/python tests/bench/bench_graph_scale.py --json [--memories 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from dreamd.memory_graph.ann_index import index_folder  # noqa: E402  (sys.path is set first)
from dreamd.memory_graph.database.store import open_store  # noqa: E402
from dreamd.memory_graph.graph import MemoryGraph  # noqa: E402
from dreamd.memory_graph.memories import nearest_others  # noqa: E402
from dreamd.memory_graph.settings import GraphSettings, InboxSettings  # noqa: E402
from tests.bench.bench_ingest import synthetic_files  # noqa: E402
from tests.memory_graph.synthetic import build_store, clustered_vectors, queries_like  # noqa: E402

DIMENSION = 384
SMALL = 10_000
DAEMON_CONFIG = """
[daemon]
dream_interval_minutes = 100000
dream_after_new_messages = 0
reevaluate_hours = 100000
inbox_poll_seconds = 0.5
[inbox]
stable_seconds = 0
"""


def build(root: Path, memories: int, seed: int) -> tuple[dict, np.ndarray, np.ndarray]:
    """A state dir holding a synthetic store and its index; returns timings, vectors, centres."""
    from dreamd.daemon.service.state_dir import StateLayout

    layout = StateLayout(root).ensure()
    vectors, labels, centres = clustered_vectors(memories, DIMENSION, seed)
    started = time.monotonic()
    build_store(layout.database, vectors, labels, seed, semantic=5)
    built = time.monotonic() - started
    db = open_store(layout.database)
    started = time.monotonic()
    MemoryGraph.load(db, GraphSettings(), index_folder(layout.database))
    indexed = time.monotonic() - started
    edges = db.execute("SELECT count(*) FROM edges").fetchone()[0]
    db.close()
    return {"store_build_s": built, "index_build_s": indexed, "edges": edges}, vectors, centres


def knn_recall(database: Path, vectors: np.ndarray, centres: np.ndarray, queries: int = 1000, k: int = 8) -> float:
    db = open_store(database)
    graph = MemoryGraph.load(db, GraphSettings(exact_below=0), index_folder(database))
    asked = queries_like(centres, queries, seed=99)
    new_conversation = np.full(queries, -1, dtype=np.int64)
    approximate, _ = graph.nearest(db, asked, new_conversation, k)
    exact, _ = nearest_others(asked, new_conversation, graph.ids, vectors, graph.conversations, k)
    db.close()
    return float(np.mean([len(set(a) & set(e)) / k for a, e in zip(approximate.tolist(), exact.tolist())]))


def collisions_per_s(database: Path, count: int = 40) -> dict:
    db = open_store(database)
    started = time.monotonic()
    graph = MemoryGraph.load(db)
    loaded = time.monotonic()
    graph.snapshot()
    built = time.monotonic()
    found = graph.collisions(db, count, seed=7, settings=GraphSettings())
    sampled = time.monotonic() - built
    db.close()
    return {"load_s": loaded - started, "csr_s": built - loaded, "per_s": len(found) / sampled}


def ingest_rate(root: Path, embedder, messages: int, seed: int) -> dict:
    from dreamd.daemon.service.state_dir import StateLayout
    from dreamd.memory_graph.ingest import Ingester

    layout = StateLayout(root)
    started = time.monotonic()
    ingester = Ingester(layout.inbox, layout.database, embedder, InboxSettings(stable_seconds=0.0), GraphSettings())
    opened = time.monotonic() - started
    with tempfile.TemporaryDirectory() as tmp:
        for path in synthetic_files(Path(tmp), messages, 100, seed=seed):
            ingester.inbox.drop(path)
    started = time.monotonic()
    report = ingester.drain()
    seconds = time.monotonic() - started
    ingester.db.close()
    return {"open_s": opened, "messages": report.messages, "per_s": report.messages / seconds}


def vm_hwm_gb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024 / 1024
    return float("nan")


def daemon_checks(root: Path, messages: int, tmp: Path) -> dict:
    """Start dreamd on `root`: time to READY, `dreamctl status`, an ingest of `messages`, peak RSS."""
    from dreamd.daemon.service.state_dir import StateLayout

    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp / "notify.sock"))
    ready = threading.Event()

    def listen():
        while True:
            try:
                message = notify.recv(4096).decode()
            except OSError:
                return
            if "READY=1" in message.split("\n"):
                ready.set()

    threading.Thread(target=listen, daemon=True).start()
    (tmp / "dreamd.toml").write_text(DAEMON_CONFIG)
    env = {**os.environ, "DREAMD_STATE_DIR": str(root), "NOTIFY_SOCKET": str(tmp / "notify.sock"),
           "WATCHDOG_USEC": "30000000", "DREAMD_CONFIG": str(tmp / "dreamd.toml")}
    for key in ("WATCHDOG_PID", "STATE_DIRECTORY", "RUNTIME_DIRECTORY"):
        env.pop(key, None)
    binaries = Path(sys.executable).parent
    log = open(tmp / "dreamd.log", "wb")
    proc = subprocess.Popen([str(binaries / "dreamd")], env=env, cwd=tmp, stdout=log, stderr=subprocess.STDOUT)
    out: dict = {}
    try:
        started = time.monotonic()
        if not ready.wait(300):
            raise SystemExit(f"dreamd sent no READY=1 within 300 s; see {tmp / 'dreamd.log'}")
        out["start_to_ready_s"] = time.monotonic() - started
        started = time.monotonic()
        status = subprocess.run([str(binaries / "dreamctl"), "status", "--json"], env=env, cwd=tmp,
                                capture_output=True, text=True, timeout=120)
        out["status_s"] = time.monotonic() - started
        out["status_nodes"] = json.loads(status.stdout)["graph"]["nodes"] if status.returncode == 0 else None
        layout = StateLayout(root)
        done_before = len(list(layout.inbox_folder("done").iterdir()))
        started = time.monotonic()
        with tempfile.TemporaryDirectory() as sources:
            files = synthetic_files(Path(sources), messages, 100, seed=3)
            for path in files:
                os.rename(path, layout.inbox_folder("new") / f"daemon-{path.name}")
        while len(list(layout.inbox_folder("done").iterdir())) < done_before + len(files):
            if proc.poll() is not None or time.monotonic() - started > 900:
                raise SystemExit(f"dreamd did not ingest the files; see {tmp / 'dreamd.log'}")
            time.sleep(0.2)
        out["daemon_ingest_s"] = time.monotonic() - started
        out["daemon_peak_rss_gb"] = vm_hwm_gb(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        notify.close()
        log.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    parser.add_argument("--memories", type=int, default=1_000_000)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None, help="where the stores go (default: a temp dir)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import structlog

    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    from dreamd.memory_graph.embedder import Embedder
    from dreamd.memory_graph.settings import EmbedderSettings

    def say(text: str) -> None:
        if not args.json:
            print(text, flush=True)

    with tempfile.TemporaryDirectory(prefix="dreamd-scale-", dir=args.workdir) as tmp:
        work = Path(tmp)
        small, big = work / "small", work / "big"
        small_build, _, _ = build(small, SMALL, args.seed + 1)
        big_build, vectors, centres = build(big, args.memories, args.seed)
        say(f"built: {big_build}")
        recall = knn_recall(big / "dreamd.db", vectors, centres)
        del vectors
        say(f"recall {recall}")
        small_collisions, big_collisions = collisions_per_s(small / "dreamd.db"), collisions_per_s(big / "dreamd.db")
        say(f"collisions {small_collisions} {big_collisions}")
        embedder = Embedder(EmbedderSettings())
        embedder.encode(["warm up the embedder"] * 64)
        small_ingest = ingest_rate(small, embedder, args.messages, seed=1)
        big_ingest = ingest_rate(big, embedder, args.messages, seed=2)
        say(f"ingest {small_ingest} {big_ingest}")
        del embedder
        daemon_dir = work / "daemon"
        daemon_dir.mkdir()
        daemon = daemon_checks(big, args.messages, daemon_dir)
        result = {
            "ingest_ratio_1m": round(big_ingest["per_s"] / small_ingest["per_s"], 3),
            "knn_recall": round(recall, 4),
            "start_to_ready_s": round(daemon["start_to_ready_s"], 2),
            "status_s": round(daemon["status_s"], 3),
            "daemon_peak_rss_gb": round(daemon["daemon_peak_rss_gb"], 3),
            "collision_ratio_1m": round(big_collisions["per_s"] / small_collisions["per_s"], 3),
            "memories": args.memories,
            "edges_1m": big_build["edges"],
            "store_build_1m_s": round(big_build["store_build_s"], 1),
            "index_build_1m_s": round(big_build["index_build_s"], 1),
            "ingest_msgs_per_s_10k": round(small_ingest["per_s"], 1),
            "ingest_msgs_per_s_1m": round(big_ingest["per_s"], 1),
            "ingester_open_10k_s": round(small_ingest["open_s"], 2),
            "ingester_open_1m_s": round(big_ingest["open_s"], 2),
            "collisions_per_s_10k": round(small_collisions["per_s"], 1),
            "collisions_per_s_1m": round(big_collisions["per_s"], 1),
            "graph_load_1m_s": round(big_collisions["load_s"], 2),
            "csr_build_1m_s": round(big_collisions["csr_s"], 2),
            "daemon_ingest_s": round(daemon["daemon_ingest_s"], 1),
            "status_nodes": daemon["status_nodes"],
            "cores": os.cpu_count(),
        }
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
