"""The approximate nearest-neighbour index beside SQLite: a usearch HNSW over the memories' vectors.

SQLite stays the source of truth; this index is a cache of it that can always be rebuilt. Keys are
memory ids. Vectors are stored as int8 (a quarter of float32, and HNSW builds about four times
faster than with f16 on CPUs without f16 arithmetic): the index only *proposes* candidates, which
the graph re-ranks with the exact float32 vectors from SQLite, so quantisation costs the edges no
precision, only which candidates are found. How many of the exact top 8 it finds depends on the
graph's size and on how widely it searches, which grows with the index (`search_width`): a small
graph needs a narrow search, a million memories a wide one.

On disk, a folder beside the database (`dreamd.db` → `dreamd.ann/`): index files named
`index-<max id>-<pid>-<token>.usearch`, and `index.json`, the pointer: which file, its size and
crc32, the highest memory id it covers, how many it holds and how it was built. A save writes a new
file (temp, fsync, rename, directory fsync) and only then replaces the pointer the same way, so a
crash at any moment leaves an old pointer naming a complete file, or the new pair.

At open the pointer is checked against its file and against the database: missing, truncated,
corrupt, built differently, ahead of the database, or disagreeing with it on the newest memory →
rebuilt from SQLite; behind → caught up from SQLite (every ingest only adds memories with larger
ids, so "everything above the highest id covered" is the whole difference). Each outcome is logged.
"""

from __future__ import annotations

import json
import os
import secrets
import time
import zlib
from pathlib import Path

import numpy as np
import structlog
from sqlite_utils import Database

from dreamd.memory_graph.database.store import blob_vector
from dreamd.memory_graph.inbox_placement import fsync
from dreamd.memory_graph.settings import GraphSettings

log = structlog.get_logger("dreamd.ann")

POINTER = "index.json"
# How the HNSW graph is built; a file built otherwise is rebuilt rather than mixed with new settings.
LAYOUT = {"metric": "cos", "dtype": "i8", "connectivity": 16, "expansion_add": 64}
WIDEST_FROM = 1_000_000  # memories from which the search is as wide as `index_search_expansion`
NARROWEST = 64
CATCH_UP_ROWS = 20_000  # vectors read from SQLite per step while rebuilding or catching up
PARALLEL_ADD = 256  # vectors inserted at once from which every core is used
PENDING_AT_MOST = 512  # vectors held back from the HNSW graph (and searched exactly) before inserting
SWEEP_AGE_S = 600  # unreferenced files older than this are leftovers of a crash or of another writer


def index_folder(database: Path | str) -> Path:
    """Where the index of the database at `database` lives."""
    database = Path(database)
    return database.with_name(database.stem + ".ann")


class AnnIndex:
    def __init__(self, folder: Path, settings: GraphSettings, dimension: int = 0):
        self.folder = folder
        self.settings = settings
        self.dimension = dimension
        self.index = _new_index(dimension, settings) if dimension else None
        self.max_id = 0  # every memory with an id up to this is in the index, none above
        self.unsaved = 0
        self._saved_at = time.monotonic()
        self._retry_at = 0.0  # after a failed save, when to try again
        self._file: str | None = None  # the file the pointer names, as far as this process knows
        self._pending_ids: list[np.ndarray] = []  # added, not yet inserted into `index` (see `add`)
        self._pending_vectors: list[np.ndarray] = []
        self._pending = 0

    def __len__(self) -> int:
        return (len(self.index) if self.index is not None else 0) + self._pending

    # -- open: load, verify against the database, rebuild or catch up ------------------------
    @classmethod
    def open(cls, folder: Path, db: Database, settings: GraphSettings) -> AnnIndex:
        started = time.monotonic()
        folder.mkdir(parents=True, exist_ok=True)
        ann = cls(folder, settings)
        pointer = _read_pointer(folder)
        problem = ann._restore(pointer, db) if pointer is not None else "missing"
        _sweep(folder, keep=ann._file)
        if problem:
            if problem != "missing" or db.execute("SELECT 1 FROM memory_nodes LIMIT 1").fetchone():
                log.warning("ann.rebuild", folder=str(folder), reason=problem)
            ann = cls(folder, settings)
        loaded = len(ann)
        added = ann.catch_up(db)
        if problem and len(ann):
            ann.save()  # a rebuild is minutes at a million memories: never lose it to a crash
        log.info("ann.ready", memories=len(ann), max_id=ann.max_id, loaded=loaded, caught_up=added,
                 rebuilt_because=problem, seconds=round(time.monotonic() - started, 3))
        return ann

    def _restore(self, pointer: dict, db: Database) -> str | None:
        """Load the file `pointer` names; None if it holds what the pointer says and agrees with
        the database, else why not."""
        if any(pointer.get(key) != value for key, value in LAYOUT.items()):
            return "built with other settings"
        path = self.folder / str(pointer.get("file", ""))
        if not path.is_file():
            return "file missing"
        if path.stat().st_size != pointer.get("bytes"):
            return f"truncated or replaced ({path.stat().st_size} bytes, the pointer says {pointer.get('bytes')})"
        if _crc32(path) != pointer.get("crc32"):
            return "corrupt (crc32 differs)"
        newest = db.execute("SELECT max(id) FROM memory_nodes").fetchone()[0] or 0
        max_id, count = int(pointer.get("max_id", -1)), int(pointer.get("count", -1))
        if max_id > newest:
            return f"ahead of the database (covers id {max_id}, the newest memory is {newest})"
        try:
            from usearch.index import Index

            index = Index.restore(str(path))
        except Exception as exc:  # usearch raises RuntimeError for a bad header, others for worse
            return f"unreadable ({exc})"
        if index is None or len(index) != count or index.ndim != pointer.get("dimension"):
            return "holds other than the pointer says"
        if db.execute("SELECT count(*) FROM memory_nodes WHERE id <= ?", (max_id,)).fetchone()[0] != count:
            return "does not match the database (another count of memories up to its newest)"
        if count and not _agrees(index, db, max_id):
            return "does not match the database (its newest vector differs)"
        index.expansion_add = LAYOUT["expansion_add"]
        self.index, self.dimension, self.max_id, self._file = index, index.ndim, max_id, pointer["file"]
        return None

    def catch_up(self, db: Database) -> int:
        """Add what the database holds above `max_id`; returns how many."""
        added = 0
        while True:
            rows = db.execute(
                "SELECT node_id, vector FROM embeddings WHERE node_id > ? ORDER BY node_id LIMIT ?",
                (self.max_id, CATCH_UP_ROWS),
            ).fetchall()
            if not rows:
                self.flush()
                return added
            self.add(np.array([r[0] for r in rows], dtype=np.int64), np.stack([blob_vector(r[1]) for r in rows]))
            added += len(rows)
            if added % (10 * CATCH_UP_ROWS) == 0:
                log.info("ann.catching_up", added=added, max_id=self.max_id)

    # -- use ---------------------------------------------------------------------------------
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Memories in increasing id order, all above `max_id` (the caller filters)."""
        if not len(ids):
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.index is None:
            self.dimension = vectors.shape[1]
            self.index = _new_index(self.dimension, self.settings)
        # Ingest adds a file's few memories at a time. Inserted one by one that is one core's work;
        # held back and inserted a few hundred at once, every core links them. Until then they are
        # searched exactly (`_search_pending`), so no search misses them.
        self._pending_ids.append(np.asarray(ids, dtype=np.uint64))
        self._pending_vectors.append(vectors)
        self._pending += len(ids)
        self.max_id = int(ids[-1])
        self.unsaved += len(ids)
        if self._pending >= PENDING_AT_MOST:
            self.flush()

    def flush(self) -> None:
        """Insert what `add` held back."""
        if not self._pending:
            return
        ids, vectors = np.concatenate(self._pending_ids), np.concatenate(self._pending_vectors)
        self._pending_ids, self._pending_vectors, self._pending = [], [], 0
        # Concurrent inserts link a little worse (a fresh node can miss one added beside it), so a
        # handful still goes in on one thread.
        self.index.add(ids, vectors, threads=0 if len(ids) >= PARALLEL_ADD else 1)

    def search(self, vectors: np.ndarray, count: int) -> np.ndarray:
        """The ids of up to `count` approximate nearest memories per query, -1 where fewer; the
        memories `add` still holds back come as extra columns, their exact best `count`."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        out = np.full((len(vectors), count), -1, dtype=np.int64)
        if self.index is None or not len(vectors):
            return out
        if len(self.index):
            self.index.expansion_search = search_width(self.settings.index_search_expansion, len(self))
            matches = self.index.search(vectors, count, threads=0)
            keys = np.asarray(matches.keys, dtype=np.int64).reshape(len(vectors), -1)
            # One query comes back as `Matches` (its keys only those found), several as
            # `BatchMatches` (keys padded, with `counts`).
            counts = np.asarray(matches.counts) if hasattr(matches, "counts") else np.array([len(matches)])
            found = np.arange(keys.shape[1])[None, :] < counts.reshape(-1, 1)
            out[:, : keys.shape[1]] = np.where(found, keys, -1)
        return np.concatenate([out, self._search_pending(vectors, count)], axis=1) if self._pending else out

    def _search_pending(self, vectors: np.ndarray, count: int) -> np.ndarray:
        held = np.concatenate(self._pending_vectors)
        scores = vectors @ held.T / np.maximum(np.linalg.norm(held, axis=1), 1e-12)
        best = np.argsort(-scores, axis=1, kind="stable")[:, :count]
        return np.concatenate(self._pending_ids).astype(np.int64)[best]

    # -- save --------------------------------------------------------------------------------
    def maybe_save(self) -> bool:
        """Save if `index_save_additions` are unsaved, or some are and `index_save_seconds` passed."""
        due = self.unsaved >= self.settings.index_save_additions or (
            self.unsaved and time.monotonic() - self._saved_at >= self.settings.index_save_seconds)
        if not due or time.monotonic() < self._retry_at:
            return False
        try:
            self.save()
        except OSError as exc:  # a full disk must not fail an ingest already committed: the index is a cache
            log.warning("ann.save_failed", folder=str(self.folder), error=str(exc))
            self._retry_at = time.monotonic() + self.settings.index_save_seconds  # not at every file
            return False
        return True

    def save(self) -> None:
        if self.index is None:
            return
        self.flush()
        started = time.monotonic()
        name = f"index-{self.max_id}-{os.getpid()}-{secrets.token_hex(3)}.usearch"
        staged = self.folder / f".{name}.tmp"
        try:
            self.index.save(str(staged))
            fsync(staged)
            size, crc = staged.stat().st_size, _crc32(staged)
            os.rename(staged, self.folder / name)
            fsync(self.folder)
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        pointer = {"file": name, "bytes": size, "crc32": crc, "max_id": self.max_id, "count": len(self.index),
                   "dimension": self.dimension, **LAYOUT, "saved_at": time.time()}
        _write_atomically(self.folder / POINTER, json.dumps(pointer, indent=1).encode())
        if self._file and self._file != name:
            (self.folder / self._file).unlink(missing_ok=True)
        self._file, self.unsaved, self._saved_at = name, 0, time.monotonic()
        log.info("ann.saved", file=name, memories=len(self.index), bytes=size,
                 seconds=round(time.monotonic() - started, 3))


def search_width(widest: int, memories: int) -> int:
    """The HNSW search width for an index of `memories`: `widest` from a million on, in proportion
    below, never under 64 (nor over `widest`). Measured on clustered memories, 1000 queries, two
    cores (recall of the exact top 8 / ms a query in a batch): at 1,000,000 0.944 / 1.1 at 256,
    0.951 / 1.9 at 512, 0.956 / 3.7 at 768, 0.960 / 4.3 at 1024; at 200,000 already 0.998 at 128.
    A fixed width either misses neighbours at a million or slows every ingest far below that."""
    return int(min(widest, max(NARROWEST, round(widest * memories / WIDEST_FROM))))


def _new_index(dimension: int, settings: GraphSettings):
    from usearch.index import Index

    return Index(ndim=dimension, metric=LAYOUT["metric"], dtype=LAYOUT["dtype"],
                 connectivity=LAYOUT["connectivity"], expansion_add=LAYOUT["expansion_add"],
                 expansion_search=search_width(settings.index_search_expansion, 0))


def _agrees(index, db: Database, node_id: int) -> bool:
    """The index's vector for `node_id` points the way the database's does (int8 is not exact)."""
    row = db.execute("SELECT vector FROM embeddings WHERE node_id = ?", (node_id,)).fetchone()
    stored = index.get(np.uint64(node_id), dtype=np.float32)
    if row is None or stored is None:
        return False
    truth, stored = blob_vector(row[0]), np.asarray(stored, dtype=np.float32).reshape(-1)
    if truth.shape != stored.shape:
        return False
    cosine = float(truth @ stored) / (float(np.linalg.norm(truth) * np.linalg.norm(stored)) or 1.0)
    return cosine > 0.98


def _read_pointer(folder: Path) -> dict | None:
    try:
        pointer = json.loads((folder / POINTER).read_bytes())
    except (OSError, ValueError):
        return None
    return pointer if isinstance(pointer, dict) else None


def _sweep(folder: Path, keep: str | None) -> None:
    """Remove what crashed saves left: temp files, and index files no pointer names (old enough
    that no other process can be about to name it)."""
    now = time.time()
    for entry in folder.iterdir():
        if entry.name == keep or entry.name == POINTER:
            continue
        try:
            if now - entry.stat().st_mtime > SWEEP_AGE_S:
                entry.unlink()
        except OSError:
            pass


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as handle:
        while block := handle.read(1 << 24):
            crc = zlib.crc32(block, crc)
    return crc


def _write_atomically(path: Path, data: bytes) -> None:
    # memory_graph may not import trainers/atomic.py (the libraries are independent): the same three steps.
    staged = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(staged, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(staged, path)
    fsync(path.parent)
