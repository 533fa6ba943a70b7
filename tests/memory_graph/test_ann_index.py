"""The approximate index beside SQLite: damaged or stale at start → rebuilt or caught up with the
same edges as a healthy one; SIGKILL during a save → the next open recovers with every memory."""

import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from dreamd.daemon.service.state_dir import StateLayout
from dreamd.memory_graph.ann_index import POINTER, AnnIndex, index_folder
from dreamd.memory_graph.database.store import open_store
from dreamd.memory_graph.ingest import Ingester
from dreamd.memory_graph.settings import GraphSettings, InboxSettings
from tests.memory_graph.synthetic import WordEmbedder, build_store, chat_files, clustered_vectors

SAVE_WORKER = Path(__file__).with_name("ann_save_worker.py")
def ingest(root: Path, settings: GraphSettings, batches: list[list[Path]]) -> Ingester:
    layout = StateLayout(root).ensure()
    ingester = Ingester(layout.inbox, layout.database, WordEmbedder(), InboxSettings(stable_seconds=0.0), settings)
    for batch in batches:
        for path in batch:
            ingester.inbox.drop(path)
        assert ingester.drain().ingested == len(batch)
    return ingester


def all_edges(ingester: Ingester) -> dict[tuple, float]:
    return {(src, dst, kind): weight for src, dst, kind, weight in ingester.db.execute(
        "SELECT src, dst, kind, weight FROM edges ORDER BY src, dst, kind")}


def same_edges(found: dict[tuple, float], expected: dict[tuple, float]) -> bool:
    # Weights are float32 cosines, summed in another order by the re-ranking: equal to 1e-5.
    return found.keys() == expected.keys() and all(abs(found[e] - expected[e]) < 1e-5 for e in expected)


def damage(folder: Path, how: str, older: Path) -> None:
    pointer = json.loads((folder / POINTER).read_text())
    index_file = folder / pointer["file"]
    if how == "lost":
        shutil.rmtree(folder)
    elif how == "truncated":
        index_file.write_bytes(index_file.read_bytes()[: index_file.stat().st_size // 2])
    elif how == "corrupt":  # same size, a few bytes flipped
        data = bytearray(index_file.read_bytes())
        for at in range(len(data) // 3, len(data) // 3 + 64):
            data[at] ^= 0xFF
        index_file.write_bytes(bytes(data))
    elif how == "behind":  # the index as saved before the last batch: caught up, not rebuilt
        shutil.rmtree(folder)
        shutil.copytree(older, folder)


@pytest.mark.parametrize("how, expect", [("lost", "rebuild"), ("truncated", "rebuild"), ("corrupt", "rebuild"),
                                         ("behind", "caught_up")])
def test_a_damaged_or_stale_index_gives_the_same_edges(tmp_path, how, expect):
    sources = tmp_path / "sources"
    batches = [chat_files(sources, batch) for batch in range(3)]
    # exact_below=0: every search goes through the index; saved after every file.
    indexed = GraphSettings(min_similarity=0.2, exact_below=0, index_save_additions=1)
    reference = ingest(tmp_path / "reference", GraphSettings(min_similarity=0.2), batches)  # the exact scan
    expected = all_edges(reference)
    assert sum(1 for edge in expected if edge[2] == "semantic") > 50
    assert same_edges(all_edges(ingest(tmp_path / "indexed", indexed, batches)), expected)  # a healthy index

    first = ingest(tmp_path / "state", indexed, batches[:1])
    folder = index_folder(first.db.execute("PRAGMA database_list").fetchone()[2])
    shutil.copytree(folder, tmp_path / "after-first-batch")
    for path in batches[1]:
        first.inbox.drop(path)
    first.drain()
    first.db.close()
    damage(folder, how, tmp_path / "after-first-batch")

    with capture_logs() as logs:
        again = ingest(tmp_path / "state", indexed, batches[2:])
    events = {entry["event"]: entry for entry in logs}
    if expect == "rebuild":
        assert "ann.rebuild" in events
    else:
        assert "ann.rebuild" not in events and events["ann.ready"]["caught_up"] > 0
    assert same_edges(all_edges(again), expected)
    nodes = again.db.execute("SELECT count(*) FROM memory_nodes").fetchone()[0]
    assert len(again.graph.ann) == nodes


def test_files_of_one_memory_each_go_through_the_index(tmp_path):
    # One new memory is one query, which usearch answers with another type than a batch: a file
    # holding a single exchange once quarantined every such file as soon as the index answered.
    sources = tmp_path / "sources"
    singles = []
    for path in chat_files(sources, 7, files=2):
        for number, line in enumerate(path.read_text().splitlines()):
            for turn in (0, 2):  # each user/assistant exchange in a file of its own
                exchange = {"messages": json.loads(line)["messages"][turn : turn + 2]}
                single = sources / f"{path.stem}-{number}-{turn}.jsonl"
                single.write_text(json.dumps(exchange) + "\n")
                singles.append(single)
    reference = ingest(tmp_path / "reference", GraphSettings(min_similarity=0.2), [singles])
    indexed = ingest(tmp_path / "indexed", GraphSettings(min_similarity=0.2, exact_below=0), [singles])
    expected = all_edges(reference)
    assert sum(1 for edge in expected if edge[2] == "semantic") > 10
    assert same_edges(all_edges(indexed), expected)


def test_memories_held_back_from_the_hnsw_graph_are_found_and_inserted(tmp_path):
    # Ingest's few memories a file wait to be inserted a few hundred at once; a search meanwhile
    # must still find them (each query below is closest to itself, a held-back memory).
    vectors, _labels, _centres = clustered_vectors(1100, 32, seed=3)
    (tmp_path / "ann").mkdir()
    ann = AnnIndex(tmp_path / "ann", GraphSettings())
    ann.add(np.arange(1, 1001, dtype=np.int64), vectors[:1000])  # a catch-up's chunk: inserted at once
    assert len(ann.index) == 1000
    for start in range(1000, 1100, 2):  # files of two memories
        ann.add(np.arange(start + 1, start + 3, dtype=np.int64), vectors[start:start + 2])
    assert len(ann) == 1100 and ann.max_id == 1100 and len(ann.index) == 1000
    own = np.arange(1001, 1101)
    assert (ann.search(vectors[1000:], 8) == own[:, None]).any(axis=1).all()
    ann.flush()
    assert len(ann.index) == 1100 and len(ann) == 1100
    assert (ann.search(vectors[1000:], 8) == own[:, None]).any(axis=1).all()
    ann.add(np.array([1101]), vectors[:1] * -1)
    ann.save()  # saves what is held back too
    assert len(ann.index) == 1101 and json.loads((tmp_path / "ann" / POINTER).read_text())["count"] == 1101


def test_sigkill_during_index_saves_recovers_every_memory(tmp_path):
    database = tmp_path / "dreamd.db"
    vectors, labels, _ = clustered_vectors(8000, 64, seed=3)
    build_store(database, vectors[:4000], labels[:4000], seed=3)
    rng = random.Random(5)
    stored, mid_save = 4000, 0
    log = tmp_path / "worker.log"
    for _ in range(10):
        # More memories than the index on disk holds: each run catches up, then saves in a loop.
        build_store(database, vectors[stored:stored + 400], labels[stored:stored + 400], seed=stored, first=stored)
        stored += 400
        with open(log, "ab") as errors:
            worker = subprocess.Popen([sys.executable, str(SAVE_WORKER), str(database)], stdout=subprocess.PIPE,
                                      stderr=errors, text=True)
            assert worker.stdout.readline().strip() == "ready"
            time.sleep(rng.uniform(0.0, 0.2))
            worker.send_signal(signal.SIGKILL)
            worker.wait(10)
            worker.stdout.close()
        mid_save += any(p.name.endswith(".tmp") for p in index_folder(database).iterdir())
    assert mid_save >= 1  # some kills did land inside a save (a temp file was left behind)
    # The first run built the index; no kill ever left a pointer to a broken or missing file.
    rebuilds = [line for line in log.read_text().splitlines() if "ann.rebuild" in line]
    assert len(rebuilds) == 1 and "reason=missing" in rebuilds[0]

    db = open_store(database)
    with capture_logs() as logs:
        ann = AnnIndex.open(index_folder(database), db, GraphSettings())
    assert not [entry for entry in logs if entry["event"] == "ann.rebuild"]
    assert len(ann) == stored and ann.max_id == stored
    assert ann.index.contains(np.arange(1, stored + 1, dtype=np.uint64)).all()

