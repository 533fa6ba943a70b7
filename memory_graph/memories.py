"""From parsed conversations to memories and the edges between them (pure: no I/O).

A memory node is one **user→assistant exchange**: a user's message (consecutive user messages
together) and everything the assistant and its tools answered before the user spoke again. Not a
single turn, because:

- a dream is a situation and a response; an exchange is exactly that, a turn is half of it;
- a turn alone is often meaningless ("yes, do that", "Here you go:"): embedded by itself it lands
  near every other short reply, and semantic edges between such turns would be noise;
- the exchange is the unit the trainer learns from (context → decision), so a node can be traced
  to the training examples it caused;
- it halves the nodes and the embedding work.

System messages are kept as messages but belong to no node: they are instructions, not events.
An assistant message with no user before it (a greeting) is a node by itself.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

from dreamd.memory_graph.formats.records import Conversation, Parsed
from dreamd.memory_graph.settings import GraphSettings

SPEAKER = {"user": "User", "assistant": "Assistant", "tool": "Tool", "system": "System"}


@dataclass(frozen=True)
class PlannedMessage:
    sha256: str
    seq: int
    role: str
    text: str
    timestamp: float | None
    position: str


@dataclass
class PlannedConversation:
    key: str
    external_id: str | None
    title: str | None
    position: str
    messages: list[PlannedMessage]


@dataclass(frozen=True)
class PlannedNode:
    conversation: int  # index into the file's planned conversations
    messages: tuple[int, ...]  # indices into that conversation's `new` messages
    text: str
    timestamp: float | None


def conversation_key(fmt: str, conversation: Conversation) -> str:
    """An export's own id makes a conversation the same one when exported again with more turns;
    without one, only identical content is the same conversation."""
    if conversation.external_id:
        return f"{fmt}:{conversation.external_id}"
    content = json.dumps([[m.role, m.text] for m in conversation.messages], ensure_ascii=False)
    return "content:" + hashlib.sha256(content.encode("utf-8")).hexdigest()


def message_sha(key: str, seq: int, role: str, text: str) -> str:
    return hashlib.sha256(f"{key}\x1f{seq}\x1f{role}\x1f{text}".encode()).hexdigest()


def plan_conversations(parsed: Parsed) -> list[PlannedConversation]:
    planned = []
    for conversation in parsed.conversations:
        key = conversation_key(parsed.format, conversation)
        messages = [
            PlannedMessage(message_sha(key, seq, m.role, m.text), seq, m.role, m.text, m.timestamp, m.position)
            for seq, m in enumerate(conversation.messages)
        ]
        planned.append(PlannedConversation(key, conversation.external_id, conversation.title,
                                           conversation.position, messages))
    return planned


def exchanges(roles: list[str]) -> list[list[int]]:
    """Group message indices into exchanges (see the module docstring); system messages join none."""
    groups: list[list[int]] = []
    answered = True  # whether the open group already has a reply, so the next user message starts anew
    for index, role in enumerate(roles):
        if role == "system":
            continue
        if role == "user":
            if answered or not groups:
                groups.append([])
            answered = False
        elif not groups:
            groups.append([])
        if role != "user":
            answered = True
        groups[-1].append(index)
    return groups


def exchange_text(messages: list[PlannedMessage]) -> str:
    return "\n".join(f"{SPEAKER[m.role]}: {m.text}" for m in messages)


def plan_nodes(conversations: list[list[PlannedMessage]]) -> list[PlannedNode]:
    """Nodes for the messages that are new (already-stored ones were filtered out by the caller)."""
    nodes = []
    for ci, messages in enumerate(conversations):
        for group in exchanges([m.role for m in messages]):
            chosen = [messages[i] for i in group]
            stamps = [m.timestamp for m in chosen if m.timestamp is not None]
            nodes.append(PlannedNode(ci, tuple(group), exchange_text(chosen), min(stamps) if stamps else None))
    return nodes


def structural_edges(chain: list[int], settings: GraphSettings, new_from: int = 0) -> list[tuple[int, int, str, float]]:
    """Edges along one conversation's nodes, in order. `chain[:new_from]` are stored nodes already
    linked among themselves; only edges that touch a new node are returned."""
    edges = []
    for j in range(max(new_from, 1), len(chain)):
        for distance in range(1, settings.same_conversation_window + 1 if settings.same_conversation_window else 2):
            i = j - distance
            if i < 0:
                break
            if distance == 1:
                edges.append((chain[i], chain[j], "temporal", settings.temporal_weight))
            else:
                edges.append((chain[i], chain[j], "same_conversation", settings.same_conversation_weight / distance))
    return edges


def nearest_others(
    query_vectors: np.ndarray,
    query_conversations: np.ndarray,
    ids: np.ndarray,
    vectors: np.ndarray,
    conversations: np.ndarray,
    count: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The exact scan: each query's `count` most similar rows from *other* conversations (cosine of
    unit vectors), as (ids, similarities), both (queries, count), best first, padded with -1 and -inf.
    A query among the rows is never its own neighbour: it shares its conversation."""
    found = np.full((len(query_vectors), count), -1, dtype=np.int64)
    similar = np.full((len(query_vectors), count), -np.inf, dtype=np.float32)
    if not count or not len(ids) or not len(query_vectors):
        return found, similar
    take = min(count, len(ids))
    rows = max(1, min(1024, (1 << 23) // len(ids)))  # bounds the similarity matrices' memory (~100 MB)
    for start in range(0, len(query_vectors), rows):
        block = slice(start, start + rows)
        similarity = query_vectors[block] @ vectors.T
        similarity[query_conversations[block, None] == conversations[None, :]] = -np.inf
        # Equal similarities (duplicate texts) go to the older memory, as in knn_pairs: a nudge far
        # below float32's resolution, so the exact scan and the index choose the same ones.
        key = similarity.astype(np.float64) - ids[None, :] * 1e-15
        best = np.argpartition(-key, take - 1, axis=1)[:, :take]
        order = np.argsort(-np.take_along_axis(key, best, axis=1), axis=1)
        best = np.take_along_axis(best, order, axis=1)
        values = np.take_along_axis(similarity, best, axis=1)
        found[block, :take] = np.where(np.isfinite(values), ids[best], -1)
        similar[block, :take] = values
    return found, similar


def knn_pairs(
    query_ids: np.ndarray,
    candidates: list[tuple[np.ndarray, np.ndarray]],
    k: int,
    min_similarity: float,
) -> list[tuple[int, int, str, float]]:
    """Semantic edges from each query's candidate neighbours, gathered from disjoint sets of
    memories (stored, committed meanwhile, this file's own): the top k of a union is the top k of
    the parts' top k. Kept if at least `min_similarity`; pairs come back once, (smaller, larger)."""
    if k == 0 or not len(query_ids) or not candidates:
        return []
    ids = np.concatenate([c[0] for c in candidates], axis=1)
    similar = np.concatenate([c[1] for c in candidates], axis=1)
    order = np.lexsort((ids, -similar), axis=1)[:, :k]  # ties go to the older memory, whichever path found them
    pairs: dict[tuple[int, int], float] = {}
    for row, columns in enumerate(order):
        for column in columns:
            value, other = float(similar[row, column]), int(ids[row, column])
            if other < 0 or not np.isfinite(value) or value < min_similarity:
                continue
            a = int(query_ids[row])
            pair = (a, other) if a < other else (other, a)
            pairs[pair] = max(value, pairs.get(pair, value))
    # A weight must be positive; similarities at or below zero only pass with min_similarity <= 0.
    return [(a, b, "semantic", max(w, 1e-6)) for (a, b), w in pairs.items()]
