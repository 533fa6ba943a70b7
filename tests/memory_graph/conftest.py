import pytest

from dreamd.daemon.service.state_dir import StateLayout
from dreamd.memory_graph.ingest import Ingester
from dreamd.memory_graph.settings import GraphSettings, InboxSettings
from tests.helpers.fakes import HashEmbedder


@pytest.fixture
def layout(tmp_path):
    return StateLayout(tmp_path / "state").ensure()


@pytest.fixture
def make_ingester(layout):
    """Ingesters on the cheap test embedder (these tests are about the logic around embedding)."""
    made = []

    def make(**inbox):
        ingester = Ingester(layout.inbox, layout.database, HashEmbedder(),
                            InboxSettings(**{"stable_seconds": 0.0, **inbox}), GraphSettings(min_similarity=0.2))
        made.append(ingester)
        return ingester

    yield make
    for ingester in made:
        ingester.db.close()
