"""A real ingesting process for the crash test: drains the inbox of the state dir it is given.

Uses the cheap test embedder: the crash test is about the inbox moves and the transactions, and a
process that loads the real embedder spends its first seconds importing torch, where a kill tests
nothing. Prints "ready" once it is about to touch the inbox, so kills land in the work itself."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dreamd.daemon.service.state_dir import StateLayout  # noqa: E402  (sys.path is set first)
from dreamd.memory_graph.ingest import Ingester  # noqa: E402  (sys.path is set first)
from dreamd.memory_graph.settings import GraphSettings, InboxSettings  # noqa: E402  (sys.path is set first)
from tests.helpers.fakes import HashEmbedder  # noqa: E402  (sys.path is set first)

if __name__ == "__main__":
    import structlog

    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))  # stdout says "ready"
    layout = StateLayout(Path(sys.argv[1])).ensure()
    # Small batches: many transactions and moves per run, so a kill finds every phase.
    ingester = Ingester(layout.inbox, layout.database, HashEmbedder(),
                        InboxSettings(stable_seconds=0.0, batch_messages=8), GraphSettings(min_similarity=0.1))
    print("ready", flush=True)
    while ingester.drain().files:
        pass
