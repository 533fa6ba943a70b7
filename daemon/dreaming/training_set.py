"""A round's training set: accepted dreams mixed with replayed real exchanges from the logs.

Both become context-frozen examples (trainers/examples.py): the context is what the model reads
(a dream's scenario alone, or a real exchange's recent history), the response is the assistant
turn it learns. Replaying real exchanges beside the dreams is interleaved replay:
the weights keep seeing the distribution they came from, not only their own recombinations.

Example ids trace back: `dream:<id>` to a dreams row (and through it to its memories and walk),
`replay:<node id>` to a memory node.
"""

from __future__ import annotations

import random

from sqlite_utils import Database

from dreamd.daemon.dreaming.records import TRAINABLE
from dreamd.daemon.dreaming.settings import DreamSettings
from dreamd.memory_graph.database.store import write
from dreamd.trainers.examples import TrainingExample

CHAT_ROLES = ("system", "user", "assistant")  # tool output is not a turn a chat template knows


def replay_count(dreams: int, fraction: float) -> int:
    """Replayed exchanges so that they are `fraction` of the whole set (none without dreams)."""
    return round(dreams * fraction / (1 - fraction)) if dreams else 0


def dream_examples(db: Database, limit: int) -> list[TrainingExample]:
    rows = db.execute(
        f"SELECT id, scenario, response FROM dreams WHERE status IN ({','.join('?' * len(TRAINABLE))}) "
        "AND trained_in IS NULL ORDER BY id LIMIT ?", (*TRAINABLE, limit)).fetchall()
    return [TrainingExample(f"dream:{i}", [{"role": "user", "content": scenario},
                                           {"role": "assistant", "content": response}])
            for i, scenario, response in rows]


def replay_example(db: Database, node_id: int, history: int) -> TrainingExample | None:
    """A memory node as an example: its last assistant message is the response, the messages
    before it (the node's own and up to `history` earlier ones of its conversation) the context."""
    row = db.execute(
        "SELECT n.conversation_id, f.seq, l.seq FROM memory_nodes n JOIN messages f ON f.id = n.first_message_id "
        "JOIN messages l ON l.id = n.last_message_id WHERE n.id = ?", (node_id,)).fetchone()
    if row is None:
        return None
    conversation, first, last = row
    messages = db.execute(
        "SELECT seq, role, text FROM messages WHERE conversation_id = ? AND seq BETWEEN ? AND ? ORDER BY seq",
        (conversation, first - history, last)).fetchall()
    answer = next((i for i in range(len(messages) - 1, -1, -1)
                   if messages[i][1] == "assistant" and messages[i][0] >= first and messages[i][2].strip()), None)
    if answer is None:
        return None
    context = [{"role": role, "content": text} for _seq, role, text in messages[:answer] if role in CHAT_ROLES]
    if not any(m["role"] == "user" for m in context):
        return None
    return TrainingExample(f"replay:{node_id}", context + [{"role": "assistant", "content": messages[answer][2]}])


def replay_examples(db: Database, count: int, history: int, seed: int,
                    exclude: frozenset[int] = frozenset()) -> list[TrainingExample]:
    """Up to `count` real exchanges drawn at random (the same for the same seed and graph)."""
    if count <= 0:
        return []
    ids = [r[0] for r in db.execute("SELECT id FROM memory_nodes ORDER BY id").fetchall() if r[0] not in exclude]
    random.Random(seed).shuffle(ids)
    out = []
    for node_id in ids:  # some nodes have no answer or no question: skip them
        if len(out) == count:
            break
        example = replay_example(db, node_id, history)
        if example is not None:
            out.append(example)
    return out


def training_set(db: Database, settings: DreamSettings, seed: int,
                 exclude_nodes: frozenset[int] = frozenset()) -> list[TrainingExample]:
    """The next round's examples: the oldest untrained accepted (or approved) dreams, then the
    replayed exchanges. Empty when there is no dream to train on. `exclude_nodes` keeps memories
    out of replay (held-out evaluation exchanges)."""
    dreams = dream_examples(db, settings.max_dreams_per_round)
    replays = replay_examples(db, replay_count(len(dreams), settings.replay_fraction),
                              settings.replay_history_messages, seed, exclude_nodes)
    return dreams + replays


def mark_trained(db: Database, examples: list[TrainingExample], checkpoint_id: str) -> int:
    """Record which checkpoint's round used the dreams, so the next round takes new ones."""
    ids = [int(e.id.split(":", 1)[1]) for e in examples if e.id.startswith("dream:")]
    with write(db):
        db.conn.executemany("UPDATE dreams SET trained_in = ? WHERE id = ?", [(checkpoint_id, i) for i in ids])
    return len(ids)
