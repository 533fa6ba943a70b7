"""A real process that opens the approximate index of a store and saves it again and again, for
the SIGKILL test: prints "ready" once the index is open (caught up), so kills land in the saves."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import structlog  # noqa: E402  (sys.path is set first)

from dreamd.memory_graph.ann_index import AnnIndex, index_folder  # noqa: E402
from dreamd.memory_graph.database.store import open_store  # noqa: E402
from dreamd.memory_graph.settings import GraphSettings  # noqa: E402

if __name__ == "__main__":
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))  # stdout says "ready"
    database = Path(sys.argv[1])
    ann = AnnIndex.open(index_folder(database), open_store(database), GraphSettings())
    print("ready", flush=True)
    while True:
        ann.save()
