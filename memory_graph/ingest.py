"""Ingest: inbox files in, messages, memories, embeddings and edges committed, graph view updated.

Per file: claim (rename into processing/) → read and check → parse → leave out messages already
stored → plan exchange nodes. Per batch of files: embed every new node in one call (the embedder
is the cost; bigger batches run faster). Per file again: one BEGIN IMMEDIATE transaction writes it
all, then the file moves to done/. A crash anywhere leaves the file in processing/ with either
nothing or everything committed; the re-run tells which by the file's sha256.

One file never stops the others: whatever goes wrong with it (unreadable, unparseable, a name the
file system refuses, a parser or writer bug) sends it to quarantine/ with the reason, and the
drain goes on. A file that cannot even be moved is left where it is and retried only after the
others, after a back-off that grows to an hour, with one error line per try. What is not the
file's fault stops the drain instead: a full disk raises DiskFull (nothing is half-written: every
step is a transaction or a rename) and the next scan resumes by itself; a database error raises.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import structlog
from sqlite_utils import Database

from dreamd.memory_graph.ann_index import index_folder
from dreamd.memory_graph.batch_search import BatchSearch
from dreamd.memory_graph.database.store import open_store
from dreamd.memory_graph.formats.parse import parse_bytes
from dreamd.memory_graph.formats.records import Parsed, ParseError
from dreamd.memory_graph.graph import MemoryGraph
from dreamd.memory_graph.inbox import Claimed, Inbox, NotRegular, is_no_space, printable
from dreamd.memory_graph.memories import PlannedConversation, PlannedNode, plan_conversations, plan_nodes
from dreamd.memory_graph.progress import LogProgress, Progress
from dreamd.memory_graph.settings import GraphSettings, InboxSettings
from dreamd.memory_graph.writer import Conflict, Duplicate, Written, commit_file, planned_conversations

log = structlog.get_logger("dreamd.ingest")

RETRY_FIRST_SECONDS = 60.0  # a file that cannot be moved is tried again after this, doubling...
RETRY_MAX_SECONDS = 3600.0  # ...up to this
PRUNE_EVERY_SECONDS = 3600.0  # done/ retention is applied at most this often


class DiskFull(RuntimeError):
    """No space left (or over quota): ingest stopped with nothing half-written; the next scan
    resumes by itself once space is freed."""


def disk_full(exc: BaseException) -> bool:
    return is_no_space(exc) or (isinstance(exc, sqlite3.Error)
                                and getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL)


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
    set_aside: int = 0  # entries that were not regular files (FIFO, symlink, directory...)
    stuck: int = 0  # files that could not be moved: left in place, retried later
    held_back: int = 0  # such files not tried in this run: their retry time has not come
    pruned: int = 0  # old files deleted from done/
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
        self.graph = memory if memory is not None else MemoryGraph.load(self.db, graph, index_folder(database))
        self.model_name = str(getattr(embedder, "name", None)
                              or getattr(getattr(embedder, "directory", None), "name", "embedder"))
        self._deferred: dict[str, tuple[float, int]] = {}  # path -> (retry at, tries), files that would not move
        self._last_prune = float("-inf")

    def drain(self, progress: Progress | None = None, trusted: frozenset[str] = frozenset()) -> IngestReport:
        """Ingest everything ready now: first what a crash left in processing/, then new/.
        Raises DiskFull when the disk is full (what was done is kept; the rest waits)."""
        started = time.monotonic()
        progress = progress or LogProgress(self.inbox_settings.progress_seconds)
        report = IngestReport()
        leftovers, strays = self.inbox.leftovers()
        for stray in [*strays, *self.inbox.strays()]:
            self._set_aside(stray, report)
        if leftovers:
            log.info("ingest.recover", files=len(leftovers))
        queue = self._in_turn([*leftovers, *self.inbox.ready(trusted=trusted)], report)
        progress.start(len(queue))
        batch: list[Prepared] = []
        seen: set[str] = set()  # file and message hashes planned in this batch, not yet committed
        claims = list(leftovers)
        try:
            for item in queue:
                claimed = item if isinstance(item, Claimed) else self._claim(item, report)
                if claimed is None:  # another ingester took it, it is still being written, or set aside
                    progress.advance(0)
                    continue
                claims.append(claimed)
                report.files += 1
                progress.working_on(printable(claimed.original_name))
                prepared = self._prepare_one(claimed, seen, report)
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
        finally:
            # Whatever is still in processing/ is a leftover now: unlocked, it is run next time.
            for claimed in claims:
                claimed.unlock()
        self._prune(report)
        report.seconds = time.monotonic() - started
        progress.finish(report)
        return report

    def _in_turn(self, items: list[Claimed | Path], report: IngestReport) -> list[Claimed | Path]:
        """The files to run now: those not held back first, then those whose retry time has come
        (a file that would not move is never again ahead of the others)."""
        now, first, last = time.monotonic(), [], []
        for item in items:
            held = self._deferred.get(str(item.path if isinstance(item, Claimed) else item))
            if held is None:
                first.append(item)
            elif held[0] <= now:
                last.append(item)
            else:
                report.held_back += 1
        return first + last

    def _defer(self, path: Path, stage: str, exc: BaseException, report: IngestReport) -> None:
        """Leave a file that could not be moved where it is; one error line per try."""
        tries = self._deferred.get(str(path), (0.0, 0))[1]
        wait = min(RETRY_FIRST_SECONDS * 2 ** tries, RETRY_MAX_SECONDS)
        self._deferred[str(path)] = (time.monotonic() + wait, tries + 1)
        report.stuck += 1
        report.outcomes.append({"file": printable(path.name), "status": "stuck", "stage": stage, "error": str(exc)})
        log.error("ingest.file_stuck", file=printable(path.name), folder=path.parent.name, stage=stage,
                  error=str(exc), retry_in_s=wait, tries=tries + 1)

    def _settled(self, path: Path) -> None:
        self._deferred.pop(str(path), None)

    def _claim(self, path: Path, report: IngestReport) -> Claimed | None:
        try:
            claimed = self.inbox.claim(path)
        except NotRegular as stray:  # swapped in since the scan: set aside, never read
            self._set_aside(stray, report)
            return None
        except OSError as exc:
            if disk_full(exc):
                raise DiskFull(f"no space left on the device while claiming {printable(path.name)}") from exc
            self._defer(path, "claim", exc, report)
            return None
        self._settled(path)
        return claimed

    def _set_aside(self, stray: NotRegular, report: IngestReport) -> None:
        try:
            target = self.inbox.set_aside(stray)
        except OSError as exc:
            if str(stray.path) not in self._deferred:  # logged once, not at every scan
                self._defer(stray.path, "set aside", exc, report)
            return
        report.set_aside += 1
        outcome = {"file": printable(stray.path.name), "status": "set aside", "reason": stray.what,
                   "quarantined_as": target and target.name}
        report.outcomes.append(outcome)
        log.warning("ingest.not_a_regular_file", **outcome, removed=target is None)

    # -- one file, before the database is written ----------------------------------------
    def _prepare_one(self, claimed: Claimed, seen: set[str], report: IngestReport) -> Prepared | None:
        """_prepare, with whatever is wrong with this one file contained to it."""
        try:
            return self._prepare(claimed, seen, report)
        except (DiskFull, sqlite3.Error) as exc:
            if disk_full(exc):
                raise DiskFull(f"no space left on the device while reading {claimed.path.name}") from exc
            raise  # the database, not the file: stop here, everything is retried next time
        except Exception as exc:
            log.exception("ingest.file_failed", file=printable(claimed.original_name), stage="read")
            return self._quarantine(claimed, report, f"could not be read or planned: {exc!r}")

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
            log.exception("ingest.parser_bug", file=printable(name))
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
        progress.working_on(f"embedding {sum(len(p.nodes) for p in batch)} memories of {len(batch)} files")
        vectors = self.embedder.encode([node.text for p in batch for node in p.nodes])
        bounds = np.cumsum([0, *(len(p.nodes) for p in batch)])
        owns = [np.asarray(vectors[a:b], dtype=np.float32) for a, b in zip(bounds[:-1], bounds[1:])]
        ahead = None
        if self.graph_settings.knn_k and len(batch) > 1:  # one search for the batch (batch_search.py)
            ahead = BatchSearch.run(self.db, self.graph, [(p, own, planned_conversations(self.db, p))
                                                          for p, own in zip(batch, owns)], self.graph_settings.knn_k)
        for place, (prepared, own) in enumerate(zip(batch, owns)):
            progress.working_on(printable(prepared.claimed.original_name))
            try:
                written, own = self._commit_one(prepared, own, report, (ahead, place) if ahead else None)
            except sqlite3.Error as exc:
                if disk_full(exc):
                    raise DiskFull(f"no space left on the device while storing {prepared.claimed.path.name} "
                                   "(rolled back)") from exc
                raise  # the database, not the file: stop here, everything is retried next time
            except Exception as exc:  # this file's data trips the writer: it waits in quarantine
                log.exception("ingest.file_failed", file=printable(prepared.claimed.original_name), stage="store")
                self._quarantine(prepared.claimed, report, f"internal error while storing: {exc!r}",
                                 sha256=prepared.sha256)
                written = None
            if written is not None:
                self.graph.add(written.nodes, own, written.edges)
                if self._finish(prepared.claimed, report):
                    self._record(report, prepared, written)
            progress.advance(1, messages=written.messages if written else 0)

    def _commit_one(self, prepared: Prepared, own: np.ndarray, report: IngestReport,
                    ahead: tuple[BatchSearch, int] | None = None) -> tuple[Written | None, np.ndarray]:
        """One file's transaction (planned again if another ingester got some of it first), and
        the vectors it stored; None when there was nothing to write after all (a duplicate, or
        left for later)."""
        for _attempt in range(3):
            try:
                return commit_file(self.db, self.graph, prepared, own, self.graph_settings, self.model_name,
                                   ahead), own
            except Duplicate as exc:  # another ingester committed the same file meanwhile
                return self._duplicate(prepared.claimed, prepared.sha256, exc.name, report), own
            except Conflict:  # another ingester stored some of these messages meanwhile: plan again
                redo = self._prepare(prepared.claimed, set(), report)
                if redo is None:
                    return None, own
                prepared, own = redo, self.embedder.encode([node.text for node in redo.nodes])
                ahead = None  # planned again: not what the batch searched for
        self._defer(prepared.claimed.path, "store", RuntimeError("kept conflicting with another ingester"), report)
        return None, own

    def _finish(self, claimed: Claimed, report: IngestReport) -> bool:
        """processing/ -> done/; False (the file left in place, retried later) if it cannot move."""
        path = claimed.path
        try:
            self.inbox.finish(claimed)
        except OSError as exc:
            if disk_full(exc):  # committed already: the re-run finds its sha256 and only moves it
                raise DiskFull(f"no space left on the device while moving {path.name} to done/") from exc
            self._defer(path, "finish", exc, report)
            return False
        self._settled(path)
        return True

    def _record(self, report: IngestReport, prepared: Prepared, written) -> None:
        report.ingested += 1
        report.messages += written.messages
        report.duplicate_messages += prepared.duplicate_messages
        report.skipped_records += prepared.parsed.skipped
        report.nodes += len(written.nodes)
        report.edges += len(written.edges)
        outcome = {"file": printable(prepared.claimed.original_name), "status": "ingested",
                   "format": prepared.parsed.format, "messages": written.messages,
                   "duplicate_messages": prepared.duplicate_messages, "skipped_records": prepared.parsed.skipped,
                   "nodes": len(written.nodes)}
        report.outcomes.append(outcome)
        log.info("ingest.file", **outcome)
        if prepared.parsed.skipped:
            log.warning("ingest.skipped_records", file=outcome["file"], count=prepared.parsed.skipped,
                        first=prepared.parsed.skip_reasons[:3])

    def _duplicate(self, claimed: Claimed, sha: str, first_name: str, report: IngestReport) -> None:
        name = printable(claimed.original_name)
        if self._finish(claimed, report):
            report.duplicates += 1
            report.outcomes.append({"file": name, "status": "duplicate", "same_as": first_name})
            log.info("ingest.duplicate", file=name, sha256=sha, same_as=first_name)
        return None

    def _quarantine(
        self, claimed: Claimed, report: IngestReport, reason: str, where: str | None = None, **details
    ) -> None:
        name, path = printable(claimed.original_name), claimed.path
        try:
            target = self.inbox.quarantine(claimed, reason, where, **details)
        except OSError as exc:
            if disk_full(exc):
                raise DiskFull(f"no space left on the device while quarantining {path.name}") from exc
            self._defer(path, "quarantine", exc, report)
            return None
        self._settled(path)
        report.quarantined += 1
        report.outcomes.append({"file": name, "status": "quarantined", "reason": reason, "where": where})
        log.warning("ingest.quarantined", file=name, quarantined_as=target and target.name,
                    reason=reason, where=where)
        return None

    # -- done/ retention ------------------------------------------------------------------------
    def _prune(self, report: IngestReport) -> None:
        days = self.inbox_settings.done_keep_days
        if not days or time.monotonic() - self._last_prune < PRUNE_EVERY_SECONDS:
            return
        self._last_prune = time.monotonic()
        try:
            report.pruned = self.inbox.prune_done(days * 86400)
        except OSError as exc:  # retention is housekeeping: it never fails an ingest
            log.warning("ingest.prune_failed", error=str(exc))
            return
        if report.pruned:
            log.info("ingest.pruned_done", files=report.pruned, older_than_days=days)
