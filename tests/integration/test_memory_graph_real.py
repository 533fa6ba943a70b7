"""The memory graph on the real all-MiniLM-L6-v2: `dreamctl ingest --now` on the bundled samples."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from dreamd.daemon.cli.dreamctl import main as dreamctl
from dreamd.daemon.service.state_dir import StateLayout
from dreamd.memory_graph.database.store import open_store
from dreamd.memory_graph.graph import MemoryGraph
from dreamd.memory_graph.settings import GraphSettings

pytestmark = pytest.mark.real_model

SAMPLES = Path(__file__).resolve().parents[2] / "memory_graph" / "samples"


def node_like(db, pattern):
    return db.execute("SELECT id FROM memory_nodes WHERE text LIKE ?", (pattern,)).fetchone()[0]


def test_dreamctl_ingest_now_builds_a_meaningful_graph(tmp_path):
    files = [str(p) for p in sorted(SAMPLES.iterdir()) if p.name != "README.md"]
    state = tmp_path / "state"
    result = CliRunner().invoke(dreamctl, ["--state-dir", str(state), "ingest", *files, "--now", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert (summary["ingested"], summary["quarantined"], summary["messages"]) == (6, 0, 43)
    assert summary["graph"]["edge_kinds"]["semantic"] > 0

    db = open_store(StateLayout(state).database)
    # Related memories from different files and formats are linked by meaning...
    backlog = node_like(db, "User: The ingest workers fell behind%")
    alerting = node_like(db, "User: The ingest queue backlog alarm%")
    tomatoes_a = node_like(db, "User: I'm planting tomatoes%")
    tomatoes_b = node_like(db, "User: My balcony tomato leaves%")
    semantic = {tuple(r) for r in db.execute("SELECT src, dst FROM edges WHERE kind = 'semantic'").fetchall()}
    assert tuple(sorted((backlog, alerting))) in semantic
    assert tuple(sorted((tomatoes_a, tomatoes_b))) in semantic
    # ...and unrelated ones are not (the cooking and the VPN exchanges are far apart in meaning).
    rice = node_like(db, "User: I have leftover rice%")
    vpn = node_like(db, "%certificate expired%")
    assert tuple(sorted((rice, vpn))) not in semantic

    # The same files again: each one recognised, nothing stored twice.
    again = CliRunner().invoke(dreamctl, ["--state-dir", str(state), "ingest", *files, "--now", "--json"])
    assert json.loads(again.stdout.strip().splitlines()[-1])["duplicates"] == 6
    assert db.execute("SELECT count(*) FROM messages").fetchone()[0] == 43

    # Collisions on the reloaded graph: reproducible, 2-4 members, distinct in origin or meaning.
    graph = MemoryGraph.load(db)
    settings = GraphSettings()
    first = graph.collisions(db, 5, seed=11, settings=settings)
    assert first == graph.collisions(db, 5, seed=11, settings=settings)
    assert first and all(2 <= len(c.node_ids) <= 4 for c in first)
    as_networkx = graph.to_networkx()  # networkx only on demand, for checks like this one
    for c in first:
        vectors = graph.vectors[[graph.index[i] for i in c.node_ids]]
        for i in range(len(c.node_ids)):
            for j in range(i):
                assert (c.conversation_ids[i] != c.conversation_ids[j]
                        or vectors[i] @ vectors[j] < settings.collision_max_similarity)
        for member, path in zip(c.node_ids[1:], c.paths):
            assert path[0] == c.node_ids[0] and path[-1] == member
            assert all(as_networkx.has_edge(a, b) for a, b in zip(path, path[1:]))
