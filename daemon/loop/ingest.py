"""The ingest job: memory_graph's Ingester drains the inbox, in the daemon (a scheduler thread).

The service calls it only when `inbox/new/` or `inbox/processing/` holds something. The Ingester
(and its embedder, which loads torch when it first embeds) is built on the first scan that finds
files, then kept warm between scans; a reload that changes the embedder, inbox or graph settings
builds a new one. So an idle daemon never loads torch, and a busy one loads the embedder once.
"""

from __future__ import annotations

from typing import Any

from dreamd.daemon.config import Config
from dreamd.daemon.service.state_dir import StateLayout
from dreamd.memory_graph.embedder import Embedder
from dreamd.memory_graph.ingest import Ingester
from dreamd.memory_graph.progress import Progress

_ingesters: dict[tuple[str, ...], Ingester] = {}  # one warm Ingester per settings in force


def inbox_ingest(config: Config, layout: StateLayout, progress: Progress | None = None) -> dict[str, Any]:
    """Ingester.drain(): crash leftovers in processing/ first, then new/. Returns the report without
    its per-file outcomes (those are in the log); `messages` (new messages) can start a cycle early.
    `progress` hears of every file (the service's watchdog watches it). A full disk raises DiskFull:
    the next scan resumes."""
    key = (str(layout.root), repr(config.embedder), repr(config.inbox), repr(config.graph))
    ingester = _ingesters.get(key)
    if ingester is None:
        for old in _ingesters.values():
            old.db.conn.close()
        _ingesters.clear()
        ingester = _ingesters[key] = Ingester(layout.inbox, layout.database, Embedder(config.embedder),
                                              config.inbox, config.graph)
    report = ingester.drain(progress=progress)
    return {k: v for k, v in report.to_dict().items() if k != "outcomes"}
