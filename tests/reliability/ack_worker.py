"""A real ingesting process for the power-loss test: drains the inbox of the state dir it is given
and prints `ACK <sha256>` for each file the moment it is acknowledged (committed and moved to
done/), so the test can kill it right after. First it prints the database's durability settings,
as opened by production's own `open_store`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dreamd.daemon.service.logs import configure_logging  # noqa: E402  (sys.path is set first)
from dreamd.daemon.service.state_dir import StateLayout  # noqa: E402
from dreamd.memory_graph.ingest import Ingester  # noqa: E402
from dreamd.memory_graph.settings import GraphSettings, InboxSettings  # noqa: E402
from tests.helpers.fakes import HashEmbedder  # noqa: E402


class Acknowledging(Ingester):
    def _record(self, report, prepared, written) -> None:
        super()._record(report, prepared, written)
        print("ACK", prepared.sha256, flush=True)


if __name__ == "__main__":
    configure_logging("json", "warning")  # to stderr: stdout carries only the acknowledgements
    layout = StateLayout(Path(sys.argv[1])).ensure()
    ingester = Acknowledging(layout.inbox, layout.database, HashEmbedder(),
                             InboxSettings(stable_seconds=0.0, batch_messages=2), GraphSettings(min_similarity=0.1))
    synchronous = ingester.db.execute("PRAGMA synchronous").fetchone()[0]
    journal = ingester.db.execute("PRAGMA journal_mode").fetchone()[0]
    print("SETTINGS", synchronous, journal, flush=True)
    while ingester.drain().files:
        pass
    print("DONE", flush=True)
