"""One file's rows, written in one BEGIN IMMEDIATE transaction (the only place ingest writes).

Inside the transaction the file's sha256 and its messages' hashes are checked again: another
ingester may have committed them since they were planned. Such a clash rolls everything back and
says why (`Duplicate`, `Conflict`), so UNIQUE hashes never have to be relied on to fail midway.

The semantic neighbours are searched *before* the transaction (the index, or the exact scan of a
small graph), so the write lock is held for the inserts only. Another process may commit memories
between that search and our BEGIN IMMEDIATE: the refresh inside the transaction takes them in
(they are exactly the ids above what the search saw), they are scanned exactly, and each new
memory keeps the best k of the three disjoint candidate sets (searched, committed meanwhile, this
file's own): the same edges as one search inside the transaction would have found.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np
from sqlite_utils import Database

from dreamd.memory_graph.batch_search import BatchSearch
from dreamd.memory_graph.database.store import vector_blob, write
from dreamd.memory_graph.graph import Delta, MemoryGraph
from dreamd.memory_graph.memories import knn_pairs, nearest_others, structural_edges
from dreamd.memory_graph.settings import GraphSettings


class Duplicate(Exception):
    def __init__(self, name: str):
        self.name = name


class Conflict(Exception):
    """Some planned messages were stored by another ingester after planning."""


@dataclass
class Written:
    messages: int
    nodes: list[tuple[int, int]]  # (node id, conversation id), increasing ids
    edges: list[tuple[int, int, str, float]]


def commit_file(db: Database, graph: MemoryGraph, prepared, vectors: np.ndarray, settings: GraphSettings,
                model: str, ahead: tuple[BatchSearch, int] | None = None) -> Written:
    """`ahead`: the batch's search (batch_search.py) and this file's place in it, or None to search
    for this file alone."""
    vectors = np.asarray(vectors, dtype=np.float32)
    batch, place = ahead if ahead is not None and ahead[0].current(graph) else (None, -1)
    knn = bool(settings.knn_k and len(prepared.nodes))
    if batch is not None:
        searched = batch.searched(place) if knn else None
    else:
        graph.refresh(db)  # outside any transaction: what other processes committed, so the search sees it
        searched = graph.nearest(db, vectors, planned_conversations(db, prepared), settings.knn_k) if knn else None
    with write(db):
        first = db.execute("SELECT name FROM sources WHERE sha256 = ?", (prepared.sha256,)).fetchone()
        if first is not None:
            raise Duplicate(first[0])
        shas = [m.sha256 for c in prepared.conversations for m in c.messages]
        for start in range(0, len(shas), 500):
            chunk = shas[start:start + 500]
            if db.execute(f"SELECT 1 FROM messages WHERE sha256 IN ({','.join('?' * len(chunk))}) LIMIT 1",
                          chunk).fetchone():
                raise Conflict()
        meanwhile = graph.refresh(db)  # committed by others since the search; ids go on from them
        if batch is not None:  # taken in now, so a later file of the batch scans them even if this one fails
            batch.took_in(graph, meanwhile.ids, meanwhile.conversations, meanwhile.vectors)
            meanwhile = Delta(*batch.since())  # everything since the batch's search, this refresh included
        parsed = prepared.parsed
        source_id = db.execute(
            "INSERT INTO sources (sha256, name, format, bytes, conversations, messages, duplicate_messages, skipped, "
            "skip_reasons, ingested_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (prepared.sha256, prepared.claimed.path.name, parsed.format, prepared.claimed.size,
             len(parsed.conversations), len(shas), prepared.duplicate_messages, parsed.skipped,
             json.dumps(parsed.skip_reasons), time.time()),
        ).lastrowid

        nodes: list[tuple[int, int]] = []
        edges: list[tuple[int, int, str, float]] = []
        by_conversation: dict[int, list] = {}
        for node in prepared.nodes:
            by_conversation.setdefault(node.conversation, []).append(node)
        node_vectors = iter(vectors)
        for index, conversation in enumerate(prepared.conversations):
            if not conversation.messages:
                continue
            conversation_id = _conversation_id(db, conversation, source_id)
            message_ids = [
                db.execute(
                    "INSERT INTO messages (sha256, conversation_id, source_id, seq, role, text, timestamp, position) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (m.sha256, conversation_id, source_id, m.seq, m.role, m.text, m.timestamp, m.position),
                ).lastrowid
                for m in conversation.messages
            ]
            # The conversation's latest stored memories, so a re-export's new turns join its chain.
            tail = [row[0] for row in db.execute(
                "SELECT id FROM memory_nodes WHERE conversation_id = ? ORDER BY id DESC LIMIT ?",
                (conversation_id, max(settings.same_conversation_window, 1)),
            ).fetchall()][::-1]
            chain = list(tail)
            for node in by_conversation.get(index, []):
                node_id = db.execute(
                    "INSERT INTO memory_nodes (conversation_id, first_message_id, last_message_id, text, timestamp) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (conversation_id, message_ids[node.messages[0]], message_ids[node.messages[-1]], node.text,
                     node.timestamp),
                ).lastrowid
                vector = next(node_vectors)
                db.execute("INSERT INTO embeddings (node_id, model, dimension, vector) VALUES (?, ?, ?, ?)",
                           (node_id, model, len(vector), vector_blob(vector)))
                nodes.append((node_id, conversation_id))
                chain.append(node_id)
            edges += structural_edges(chain, settings, new_from=len(tail))

        if nodes and searched is not None:
            ids = np.array([n for n, _ in nodes], dtype=np.int64)
            conversations = np.array([c for _, c in nodes], dtype=np.int64)
            count = settings.knn_k
            candidates = [searched, nearest_others(vectors, conversations, ids, vectors, conversations, count)]
            if len(meanwhile.ids):
                candidates.append(nearest_others(vectors, conversations, meanwhile.ids, meanwhile.vectors,
                                                 meanwhile.conversations, count))
            edges += knn_pairs(ids, candidates, count, settings.min_similarity)
        db.conn.executemany("INSERT OR IGNORE INTO edges (src, dst, kind, weight) VALUES (?, ?, ?, ?)",
                            [(a, b, k, w) if a < b else (b, a, k, w) for a, b, k, w in edges])
    written = Written(len(shas), nodes, edges)
    graph.add(written.nodes, vectors, written.edges)  # at once, so no later refresh can skip past them
    if batch is not None and nodes:
        batch.took_in(graph, np.array([n for n, _ in nodes]), np.array([c for _, c in nodes]), vectors)
    return written


def _conversation_id(db: Database, conversation, source_id: int) -> int:
    db.execute(
        "INSERT OR IGNORE INTO conversations (key, source_id, external_id, title, position) VALUES (?, ?, ?, ?, ?)",
        (conversation.key, source_id, conversation.external_id, conversation.title, conversation.position),
    )
    return db.execute("SELECT id FROM conversations WHERE key = ?", (conversation.key,)).fetchone()[0]


def planned_conversations(db: Database, prepared) -> np.ndarray:
    """Each planned node's conversation id where the conversation is stored already (a re-export's
    new turns), else a negative stand-in: a conversation stored by nobody has no memories to exclude."""
    keys = [c.key for c in prepared.conversations]
    stored: dict[str, int] = {}
    for start in range(0, len(keys), 500):
        chunk = keys[start:start + 500]
        stored.update(db.execute(f"SELECT key, id FROM conversations WHERE key IN ({','.join('?' * len(chunk))})",
                                 chunk).fetchall())
    return np.array([stored.get(keys[node.conversation], -1 - node.conversation) for node in prepared.nodes],
                    dtype=np.int64)
