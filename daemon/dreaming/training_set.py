"""A round's training set: accepted dreams, replayed real exchanges, and the anchor share.

All become context-frozen examples (trainers/examples.py): the context is what the model reads
(a dream's scenario alone, without its notes; a real exchange's recent history; an anchor
prompt), the response is the assistant turn it learns. Replay keeps the weights on the logs
themselves; the anchors (the base model's own answers to general prompts, trainers/anchors.py)
hold general behaviour while facts move. Part of the anchor share is neighbourhood rehearsals
(neighbours.py): the round's dream questions about common things, held at the base's answers, so
a fact does not spill over onto questions of its shape.

Example ids trace back: `dream:<id>` to a dreams row (and through it to its memories and walk),
`replay:<node id>` to a memory node, `anchor:<id>` to the shipped anchor bank, `neighbour:<id>` to
the base model's neighbour cache (trainers/anchors.py, NeighbourCache).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from sqlite_utils import Database

from dreamd.daemon.dreaming.neighbours import neighbour_prompts
from dreamd.daemon.dreaming.records import TRAINABLE
from dreamd.daemon.dreaming.settings import DreamSettings
from dreamd.memory_graph.database.store import write
from dreamd.trainers.anchors import Anchor
from dreamd.trainers.examples import SoftTargets, TrainingExample

CHAT_ROLES = ("system", "user", "assistant")  # tool output is not a turn a chat template knows


def share_count(others: int, fraction: float) -> int:
    """How many examples to add to `others` so that they are `fraction` of the whole set (none
    when there is nothing else to train on)."""
    return round(others * fraction / (1 - fraction)) if others else 0


DREAM_COLUMNS = "id, scenario, response, teacher_top_k"


def dream_example(row: tuple) -> TrainingExample:
    """A dreams row (DREAM_COLUMNS) as its example: the scenario alone as context, the answer as
    response, learnt from the teacher's distribution where one was kept."""
    dream_id, scenario, response, teacher = row
    return TrainingExample(f"dream:{dream_id}", [{"role": "user", "content": scenario},
                                                 {"role": "assistant", "content": response}],
                           SoftTargets.from_bytes(teacher, held=False) if teacher is not None else None)


def dream_examples(db: Database, limit: int) -> list[TrainingExample]:
    rows = db.execute(
        f"SELECT {DREAM_COLUMNS} FROM dreams WHERE status IN ({','.join('?' * len(TRAINABLE))}) "
        "AND trained_in IS NULL ORDER BY id LIMIT ?", (*TRAINABLE, limit)).fetchall()
    return [dream_example(row) for row in rows]


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


def anchor_examples(anchors: list[Anchor], count: int, seed: int) -> list[TrainingExample]:
    """`count` anchors drawn at random (the same for the same seed), the bank in turn when more are wanted."""
    order = list(anchors)
    random.Random(seed).shuffle(order)
    return [order[i % len(order)].example() for i in range(count)] if order else []


def neighbour_examples(dreams: list[TrainingExample], count: int, seed: int,
                       answer: Callable[[list[tuple[str, str]]], list[Anchor]]) -> list[TrainingExample]:
    """Up to `count` neighbourhood rehearsals of the dreams' questions (drawn at random, the same
    for the same seed), with the base's answers from `answer` ((id, prompt) pairs -> anchors)."""
    if count <= 0:
        return []
    prompts = neighbour_prompts([e.messages[0]["content"] for e in dreams], seed)
    random.Random(seed).shuffle(prompts)
    return [a.example("neighbour") for a in answer(prompts[:count])]


def training_set(db: Database, settings: DreamSettings, seed: int, exclude_nodes: frozenset[int] = frozenset(),
                 anchors: list[Anchor] = (), neighbours: Callable | None = None) -> list[TrainingExample]:
    """The next round's examples: the oldest untrained accepted (or approved) dreams, the replayed
    exchanges, then the anchor share: neighbourhood rehearsals of the dreams (`neighbours`
    answers their prompts as the base; None leaves them out), the rest from the anchor bank.
    Empty when there is no dream to train on. `exclude_nodes` keeps memories out of replay
    (held-out evaluation exchanges)."""
    dreams = dream_examples(db, settings.max_dreams_per_round)
    replays = replay_examples(db, share_count(len(dreams), settings.replay_fraction),
                              settings.replay_history_messages, seed, exclude_nodes)
    rest = dreams + replays
    share = share_count(len(rest), settings.anchor_fraction)
    near = neighbour_examples(dreams, round(share * settings.neighbour_share), seed, neighbours) if neighbours else []
    return rest + near + anchor_examples(list(anchors), share - len(near), seed)


def mark_trained(db: Database, examples: list[TrainingExample], checkpoint_id: str) -> int:
    """Record which checkpoint's round used the dreams, so the next round takes new ones."""
    ids = [int(e.id.split(":", 1)[1]) for e in examples if e.id.startswith("dream:")]
    with write(db):
        db.conn.executemany("UPDATE dreams SET trained_in = ? WHERE id = ?", [(checkpoint_id, i) for i in ids])
    return len(ids)
