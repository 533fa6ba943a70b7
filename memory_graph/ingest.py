"""Ingest: inbox files in, messages, memories, embeddings and edges committed, graph view updated.

Per file: claim (rename into processing/) → read and check → parse → leave out messages already
stored → plan exchange nodes. Per batch of files: embed every new node in one call (the embedder
is the cost; bigger batches run faster). Per file again: one BEGIN IMMEDIATE transaction writes it
all, then the file moves to done/. A crash anywhere leaves the file in processing/ with either
nothing or everything committed; the re-run tells which by the file's sha256.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import structlog
from sqlite_utils import Database

from dreamd.memory_graph.database.store import open_store
from dreamd.memory_graph.formats.parse import parse_bytes
from dreamd.memory_graph.formats.records import Parsed, ParseError
from dreamd.memory_graph.graph import MemoryGraph
from dreamd.memory_graph.inbox import Claimed, Inbox
from dreamd.memory_graph.memories import PlannedConversation, PlannedNode, plan_conversations, plan_nodes
from dreamd.memory_graph.progress import LogProgress, Progress
from dreamd.memory_graph.settings import GraphSettings, InboxSettings
from dreamd.memory_graph.writer import Conflict, Duplicate, commit_file

log = structlog.get_logger("dreamd.ingest")


class TextEmbedder(Protocol):
    dimension: int

    def encode(self, texts: list[str]) -> np.ndarray: ...


@dataclass
class Prepared:
    claimed: Claimed
    sha256: str
    parsed: Parsed
    conversations: list[PlannedConversation]  # messages: only the new ones
    duplicate_messages: int
    nodes: list[PlannedNode]


@dataclass
class IngestReport:
    files: int = 0
    ingested: int = 0
    duplicates: int = 0
    quarantined: int = 0
    messages: int = 0
    duplicate_messages: int = 0
    skipped_records: int = 0
    nodes: int = 0
    edges: int = 0
    seconds: float = 0.0
    outcomes: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


class Ingester:
    def __init__(self, inbox_dir: Path, database: Path, embedder: TextEmbedder, inbox: InboxSettings,
                 graph: GraphSettings, db: Database | None = None, memory: MemoryGraph | None = None):
        """`inbox_dir` holds the inbox's maildir folders; `database` is the SQLite file, opened here
        unless `db` is given (open on that file) already."""
        self.embedder = embedder
        self.inbox_settings, self.graph_settings = inbox, graph
        self.inbox = Inbox(inbox_dir, inbox)
        self.db = db if db is not None else open_store(database)
        self.graph = memory if memory is not None else MemoryGraph.load(self.db)
        self.model_name = str(getattr(embedder, "name", None)
                              or getattr(getattr(embedder, "directory", None), "name", "embedder"))
        self._recovered = False

    def drain(self, progress: Progress | None = None, trusted: frozenset[str] = frozenset()) -> IngestReport:
        """Ingest everything ready now: first what a crash left in processing/, then new/."""
        started = time.monotonic()
        progress = progress or LogProgress(self.inbox_settings.progress_seconds)
        report = IngestReport()
        leftovers = [] if self._recovered else self.inbox.leftovers()
        self._recovered = True
        if leftovers:
            log.info("ingest.recover", files=len(leftovers))
        ready = self.inbox.ready(trusted=trusted)
        progress.start(len(leftovers) + len(ready))
        batch: list[Prepared] = []
        seen: set[str] = set()  # file and message hashes planned in this batch, not yet committed
        claims = list(leftovers)
        try:
            for item in [*leftovers, *ready]:
                claimed = item if isinstance(item, Claimed) else self.inbox.claim(item)
                if claimed is None:  # another ingester took it, or it is still being written
                    progress.advance(0)
                    continue
                claims.append(claimed)
                report.files += 1
                prepared = self._prepare(claimed, seen, report)
                if prepared is None:
                    progress.advance(1)
                    continue
                batch.append(prepared)
                # Nodes are about half the messages; the file cap bounds the descriptors held open.
                if sum(len(p.nodes) for p in batch) * 2 >= self.inbox_settings.batch_messages or len(batch) >= 256:
                    self._commit_batch(batch, report, progress)
                    batch, seen = [], set()
            if batch:
                self._commit_batch(batch, report, progress)
        except BaseException:
            # Whatever is still in processing/ is a leftover now: unlock it and run it next time.
            self._recovered = False
            raise
        finally:
            for claimed in claims:
                claimed.unlock()
        report.seconds = time.monotonic() - started
        progress.finish(report)
        return report

    # -- one file, before the database is written ----------------------------------------
    def _prepare(self, claimed: Claimed, seen: set[str], report: IngestReport) -> Prepared | None:
        name = claimed.path.name
        limit = self.inbox_settings.max_file_bytes
        if claimed.size > limit:
            return self._quarantine(claimed, report,
                                    f"the file is {claimed.size} bytes, over inbox.max_file_bytes ({limit})")
        data = claimed.read()
        sha = hashlib.sha256(data).hexdigest()
        first = self.db.execute("SELECT name FROM sources WHERE sha256 = ?", (sha,)).fetchone()
        if first is not None or sha in seen:
            return self._duplicate(claimed, sha, first[0] if first else "(earlier in this batch)", report)
        try:
            parsed = parse_bytes(data)
        except ParseError as exc:
            return self._quarantine(claimed, report, exc.reason, exc.where, sha256=sha, bytes=len(data))
        except Exception as exc:  # a parser bug must not stop the daemon; the file waits in quarantine
            log.exception("ingest.parser_bug", file=name)
            return self._quarantine(claimed, report, f"internal error while parsing: {exc!r}",
                                    sha256=sha, bytes=len(data))
        conversations = plan_conversations(parsed)
        stored = self._stored_shas([m.sha256 for c in conversations for m in c.messages])
        duplicates = 0
        for conversation in conversations:
            fresh = []
            for message in conversation.messages:
                if message.sha256 in stored or message.sha256 in seen:
                    duplicates += 1
                else:
                    seen.add(message.sha256)
                    fresh.append(message)
            conversation.messages = fresh
        seen.add(sha)
        nodes = plan_nodes([c.messages for c in conversations])
        return Prepared(claimed, sha, parsed, conversations, duplicates, nodes)

    def _stored_shas(self, shas: list[str]) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(shas), 500):  # SQLite's limit on bound parameters
            chunk = shas[start:start + 500]
            rows = self.db.execute(f"SELECT sha256 FROM messages WHERE sha256 IN ({','.join('?' * len(chunk))})", chunk)
            found.update(row[0] for row in rows.fetchall())
        return found

    # -- a batch: one embedding call, then a transaction per file ----------------------------
    def _commit_batch(self, batch: list[Prepared], report: IngestReport, progress: Progress) -> None:
        vectors = self.embedder.encode([node.text for p in batch for node in p.nodes])
        offset = 0
        for prepared in batch:
            own = vectors[offset: offset + len(prepared.nodes)]
            offset += len(prepared.nodes)
            for _attempt in range(3):
                try:
                    written = commit_file(self.db, self.graph, prepared, own, self.graph_settings, self.model_name)
                    break
                except Duplicate as exc:  # another ingester committed the same file meanwhile
                    self._duplicate(prepared.claimed, prepared.sha256, exc.name, report)
                    written = None
                    break
                except Conflict:  # another ingester stored some of these messages meanwhile: plan again
                    redo = self._prepare(prepared.claimed, set(), report)
                    if redo is None:
                        written = None
                        break
                    prepared, own = redo, self.embedder.encode([node.text for node in redo.nodes])
            else:
                raise RuntimeError(f"{prepared.claimed.path.name}: kept conflicting with another ingester")
            if written is not None:
                self.graph.add(written.nodes, own, written.edges)
                self.inbox.finish(prepared.claimed)
                self._record(report, prepared, written)
            progress.advance(1, messages=written.messages if written else 0)

    def _record(self, report: IngestReport, prepared: Prepared, written) -> None:
        report.ingested += 1
        report.messages += written.messages
        report.duplicate_messages += prepared.duplicate_messages
        report.skipped_records += prepared.parsed.skipped
        report.nodes += len(written.nodes)
        report.edges += len(written.edges)
        outcome = {"file": prepared.claimed.path.name, "status": "ingested", "format": prepared.parsed.format,
                   "messages": written.messages, "duplicate_messages": prepared.duplicate_messages,
                   "skipped_records": prepared.parsed.skipped, "nodes": len(written.nodes)}
        report.outcomes.append(outcome)
        log.info("ingest.file", **outcome)
        if prepared.parsed.skipped:
            log.warning("ingest.skipped_records", file=outcome["file"], count=prepared.parsed.skipped,
                        first=prepared.parsed.skip_reasons[:3])

    def _duplicate(self, claimed: Claimed, sha: str, first_name: str, report: IngestReport) -> None:
        report.duplicates += 1
        report.outcomes.append({"file": claimed.path.name, "status": "duplicate", "same_as": first_name})
        log.info("ingest.duplicate", file=claimed.path.name, sha256=sha, same_as=first_name)
        self.inbox.finish(claimed)
        return None

    def _quarantine(
        self, claimed: Claimed, report: IngestReport, reason: str, where: str | None = None, **details
    ) -> None:
        report.quarantined += 1
        target = self.inbox.quarantine(claimed, reason, where, **details)
        report.outcomes.append({"file": claimed.path.name, "status": "quarantined", "reason": reason, "where": where})
        log.warning("ingest.quarantined", file=claimed.path.name, quarantined_as=target and target.name,
                    reason=reason, where=where)
        return None
