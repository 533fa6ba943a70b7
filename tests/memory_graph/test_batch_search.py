"""A batch of files searched at once (batch_search.py) gets, file by file, the semantic edges an exact
scan inside each file's transaction would give: with the exact scan or the index, and when another
writer commits between the batch's search and its first file."""

import json
from pathlib import Path

import numpy as np
import pytest

from dreamd.daemon.service.state_dir import StateLayout
from dreamd.memory_graph.database.store import blob_vector
from dreamd.memory_graph.ingest import Ingester
from dreamd.memory_graph.memories import knn_pairs, nearest_others
from dreamd.memory_graph.settings import GraphSettings, InboxSettings
from tests.memory_graph.synthetic import WordEmbedder, chat_files, racing_writers

K, MIN_SIMILARITY = 8, 0.2


def one_exchange_files(folder: Path, batch: int) -> list[Path]:
    """chat_files' exchanges, one a file: a batch of many files with one new memory each."""
    out = []
    for path in chat_files(folder / f"whole-{batch}", batch, files=2):
        for number, line in enumerate(path.read_text().splitlines()):
            for turn in (0, 2):
                single = folder / f"{path.stem}-{number}-{turn}.jsonl"
                single.write_text(json.dumps({"messages": json.loads(line)["messages"][turn : turn + 2]}) + "\n")
                out.append(single)
    return out


def expected_edges(db, sources: list[int]) -> dict[tuple[int, int], float]:
    """For each source's memories, the exact top k over everything stored up to them (their own
    file's memories included), other conversations only."""
    rows = db.execute("SELECT n.id, n.conversation_id, e.vector, m.source_id FROM memory_nodes n "
                      "JOIN embeddings e ON e.node_id = n.id JOIN messages m ON m.id = n.first_message_id "
                      "ORDER BY n.id").fetchall()
    ids = np.array([r[0] for r in rows])
    conversations = np.array([r[1] for r in rows])
    vectors = np.stack([blob_vector(r[2]) for r in rows])
    source_of = np.array([r[3] for r in rows])
    expected = {}
    for source in sources:
        mine = np.flatnonzero(source_of == source)
        upto = int(mine.max()) + 1
        found = nearest_others(vectors[mine], conversations[mine], ids[:upto], vectors[:upto], conversations[:upto], K)
        for a, b, _kind, weight in knn_pairs(ids[mine], [found], K, MIN_SIMILARITY):
            expected[(min(a, b), max(a, b))] = weight
    return expected


def stored_edges(db, sources: list[int]) -> dict[tuple[int, int], float]:
    marks = ",".join("?" * len(sources))
    mine = [r[0] for r in db.execute("SELECT n.id FROM memory_nodes n JOIN messages m ON m.id = n.first_message_id "
                                     f"WHERE m.source_id IN ({marks})", sources)]
    return {(a, b): w for a, b, w in db.execute(
        f"SELECT src, dst, weight FROM edges WHERE kind = 'semantic' AND dst IN ({','.join('?' * len(mine))})", mine)}


def assert_same(found: dict, expected: dict) -> None:
    assert found.keys() == expected.keys()
    assert all(abs(found[e] - expected[e]) < 1e-5 for e in expected)


@pytest.mark.parametrize("exact_below", [20_000, 0], ids=["exact", "index"])
def test_a_batch_gets_the_edges_of_an_exact_scan_per_file(tmp_path, exact_below):
    settings = GraphSettings(min_similarity=MIN_SIMILARITY, exact_below=exact_below)
    layout = StateLayout(tmp_path / "state").ensure()
    ingester = Ingester(layout.inbox, layout.database, WordEmbedder(), InboxSettings(stable_seconds=0.0), settings)
    for batch in range(2):  # the second batch also finds the first one's memories
        for path in one_exchange_files(tmp_path / "sources", batch):
            ingester.inbox.drop(path)
        assert ingester.drain().ingested == 20
    sources = [r[0] for r in ingester.db.execute("SELECT id FROM sources ORDER BY id")]
    expected = expected_edges(ingester.db, sources)
    assert len(expected) > 50
    assert_same(stored_edges(ingester.db, sources), expected)


@pytest.mark.parametrize("exact_below", [20_000, 0], ids=["exact", "index"])
def test_another_writer_between_the_batch_search_and_its_files(tmp_path, exact_below):
    settings = GraphSettings(min_similarity=MIN_SIMILARITY, exact_below=exact_below)
    ours, theirs, raced, race = racing_writers(tmp_path, settings, WordEmbedder())
    for path in one_exchange_files(tmp_path / "first", 0):
        ours.inbox.drop(path)
    ours.drain()
    for path in chat_files(tmp_path / "theirs", 2):
        theirs.inbox.drop(path)
    race()  # right after our batch's search
    for path in one_exchange_files(tmp_path / "second", 1):
        ours.inbox.drop(path)
    assert ours.drain().ingested == 20
    assert raced == [4]
    db = ours.db
    sources = [r[0] for r in db.execute("SELECT id FROM sources ORDER BY id")]
    our_batch = sources[-20:]
    expected = expected_edges(db, our_batch)
    assert_same(stored_edges(db, our_batch), expected)
    their_ids = {r[0] for r in db.execute(
        "SELECT n.id FROM memory_nodes n JOIN messages m ON m.id = n.first_message_id WHERE m.source_id IN "
        f"({','.join('?' * 4)})", sources[20:24])}
    # The race mattered: files after the first of our batch have edges to what they committed.
    later = set(stored_edges(db, our_batch[1:]))
    assert any(a in their_ids for a, _b in later)
    theirs.db.close()
