"""A tiny-model state dir with a lineage of checkpoints, for the gate's tests (built once a session).

The lineage: `parent`, a gentle round on real exchanges; `child`, another gentle round on top of it;
`wrecked`, a full-weights round at a huge learning rate on noise on top of `parent`. The gate here
also checks the optional fingerprint (a damage check, off by default): `wrecked` fails it (its
greedy answers no longer resemble the base's), `child` passes every check. (The random tiny model's
probe losses hardly move and its greedy anchor answers are empty, so the default damage checks
cannot tell the two apart.)
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlite_utils import Database

from dreamd.daemon.config import Config, config_from_dict
from dreamd.daemon.dreaming.training_set import replay_example
from dreamd.daemon.gate.judge import recheck_current
from dreamd.daemon.gate.suite import held_out_nodes
from dreamd.daemon.service.state_dir import StateLayout
from dreamd.memory_graph.database.store import open_store
from dreamd.trainers.anchors import base_anchors
from dreamd.trainers.checkpoints.pointers import BASE, set_pointer
from dreamd.trainers.examples import TrainingExample
from dreamd.trainers.model_store import load_model, resolve_model_dir
from dreamd.trainers.round import train_round
from dreamd.trainers.settings import TrainingSettings
from tests.helpers.daemon_harness import save_tiny_model
from tests.helpers.dreams import sample_graph
from tests.helpers.fakes import HashEmbedder
from tests.helpers.noise import noise_examples

GENTLE = TrainingSettings(batch_size=2, optimizer="adamw", max_context_tokens=256)
WRECKING = TrainingSettings(mode="full", full_learning_rate=0.05, batch_size=2, epochs=2, optimizer="adamw",
                            max_context_tokens=256)


@dataclass
class World:
    config: Config
    layout: StateLayout
    db: Database
    parent: str
    child: str
    wrecked: str

    def recheck(self) -> dict:
        return recheck_current(self.config, self.layout, self.db, HashEmbedder().encode)

    def point(self, current: str, last_good: str) -> None:
        set_pointer(self.layout, "last_good", last_good)
        set_pointer(self.layout, "current", current)

    def rows(self, sql: str) -> list[tuple]:
        return self.db.execute(sql).fetchall()


@pytest.fixture(scope="session")
def template(tmp_path_factory) -> tuple[Config, Path, dict[str, str]]:
    """A state dir with the sample memory graph and the three checkpoints, built once."""
    root = tmp_path_factory.mktemp("recheck")
    config = config_from_dict({
        "model": {"path": str(save_tiny_model(root / "tiny-model")), "device": "cpu"},
        # The samples hold 20 exchanges: hold out more than the default 10% so slices exist.
        "evaluation": {"heldout_percent": 30, "slice_size": 3, "max_slices": 2, "acquisition_count": 2,
                       "max_new_tokens": 4},
        "gate": {"min_fingerprint_similarity": 0.75},
    })
    ingester = sample_graph(root / "state")
    db, layout = ingester.db, StateLayout(root / "state")
    held = set(held_out_nodes(db, config.evaluation.heldout_percent))
    nodes = [n for (n,) in db.execute("SELECT id FROM memory_nodes ORDER BY id").fetchall() if n not in held]
    exchanges = [e for e in (replay_example(db, n, 2) for n in nodes) if e is not None]
    db.conn.close()

    def train(examples: list[TrainingExample], settings: TrainingSettings, parent: str = BASE) -> str:
        return train_round(load_model(config.model, layout.models), examples, settings, layout, parent_id=parent)

    # The anchor bank's answers by the base, cached in the state dir once for every test's copy.
    base_anchors(resolve_model_dir(config.model, layout.models), layout.models,
                 lambda: load_model(config.model, layout.models))
    parent = train(exchanges[:4], GENTLE)
    ids = {"parent": parent, "child": train(exchanges[4:8], GENTLE, parent),
           "wrecked": train(noise_examples(8), WRECKING, parent)}
    return config, layout.root, ids


@pytest.fixture
def world(template, tmp_path):
    config, root, ids = template
    shutil.copytree(root, tmp_path / "state")
    layout = StateLayout(tmp_path / "state")
    db = open_store(layout.database)
    yield World(config, layout, db, **ids)
    db.conn.close()


