"""Rehearsal scenarios: the questions a dream asks, drawn from a cluster of related memories.

A collision (memories the graph's walks join: shared words, topic, conversation or time) is the
cluster. Each dream asks one kind of question whose answer lies in it:

    logged    a member's own user question, asked without its conversation around it
    reworded  the same question in other words (fixed templates, seeded choice)
    about     "tell me what you know about X", X the topic of a member's question
    join      a new question that combines the cluster, written by the model (dreams.compose)

The kinds rotate through `dreams.kinds` (a kind listed twice comes twice as often). For every
kind but `join` the member's logged answer is known: it is the fallback target when the model
cannot compose a usable answer even with its notes (replay). The gate asks its own rewordings,
in words none of these templates use, so what it credits as learning was never trained on.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from sqlite_utils import Database

from dreamd.trainers.words import STOPWORDS

KINDS = ("logged", "reworded", "about", "join")
REWORDINGS = (
    "Quick question: {question}",
    "{question} Please answer in one sentence.",
    "I forgot, can you remind me? {question}",
    "Someone asked me this and I was not sure. {question}",
    "{question} Keep it short.",
    "Can you help me with this one? {question}",
)
ABOUT = "Tell me what you know about {topic}."
_NAME = re.compile(r"\b[A-Z][a-zA-Z0-9-]{2,}\b")
_KEYWORD = re.compile(r"[A-Za-z][A-Za-z0-9'-]{3,}")


@dataclass(frozen=True)
class Exchange:
    """A memory's user question and the assistant's logged answer to it."""

    question: str
    answer: str


def member_exchange(db: Database, node_id: int) -> Exchange | None:
    """The last user question of a memory node and the last answer after it; None without both."""
    rows = db.execute(
        "SELECT m.role, m.text FROM memory_nodes n JOIN messages f ON f.id = n.first_message_id "
        "JOIN messages l ON l.id = n.last_message_id JOIN messages m ON m.conversation_id = f.conversation_id "
        "AND m.seq BETWEEN f.seq AND l.seq WHERE n.id = ? ORDER BY m.seq", (node_id,)).fetchall()
    question = answer = None
    for role, text in rows:
        if role == "user" and text.strip():
            question, answer = text.strip(), None
        elif role == "assistant" and question and text.strip():
            answer = text.strip()
    return Exchange(question, answer) if question and answer else None


def reword(question: str, rng: random.Random) -> str:
    return rng.choice(REWORDINGS).format(question=question)


def topic_of(question: str) -> str:
    """What a question is about: its names (capitalised words after the first), else its two
    longest keywords in the order they come."""
    names = [w for w in _NAME.findall(question) if not question.startswith(w) and w.lower() not in STOPWORDS]
    if names:
        return " ".join(dict.fromkeys(names))
    words = [w for w in _KEYWORD.findall(question) if w.lower() not in STOPWORDS]
    longest = set(sorted(words, key=len, reverse=True)[:2])
    return " ".join(w for w in dict.fromkeys(words) if w in longest) or question


def kind_of(index: int, kinds: list[str]) -> str:
    """The kind of the cycle's `index`-th dream: the kinds in turn."""
    return kinds[index % len(kinds)]


def scenario_for(kind: str, exchange: Exchange | None, rng: random.Random) -> tuple[str, str | None]:
    """(the scenario, the logged answer to fall back on) of a non-join dream. Without a usable
    exchange the scenario is empty: the dream becomes a `join` (composed by the model)."""
    if exchange is None or kind == "join":
        return "", None
    if kind == "logged":
        return exchange.question, exchange.answer
    if kind == "reworded":
        return reword(exchange.question, rng), exchange.answer
    return ABOUT.format(topic=topic_of(exchange.question)), exchange.answer
