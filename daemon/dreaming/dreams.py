"""Dreams: rehearsals of what a cluster of memories knows, answered by the model with the
memories in front of it (the teacher) and later trained without them (the student).

The memory graph is a latent space and a collision (2-4 memories joined by walks) is a sample from
it. A dream is decoded from it in two steps, both batched generation (trainers/generate.py):

1. the scenario (scenarios.py): a question whose answer lies in the cluster — a member's logged
   question, a rewording, "tell me about X", or, for `join` dreams, a new question the model
   composes from the memories at a temperature (the noise);
2. play out, as the teacher: the current model answers the scenario with the cluster's memories
   as notes in its system message, newest first, so a later correction is read first.

The training example is the scenario alone followed by the teacher's answer (training_set.py):
context distillation, the weights learning to answer as the model answers with its notes. A
dream whose generation fails or times out keeps its `failure` and is rejected with it by the
signal agent; it is still stored.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from sqlite_utils import Database

from dreamd.daemon.dreaming.scenarios import Exchange, kind_of, member_exchange, scenario_for, topic_of
from dreamd.daemon.dreaming.settings import DreamSettings
from dreamd.memory_graph.graph import Collision
from dreamd.trainers.examples import SoftTargets
from dreamd.trainers.generate import Generation, generate_chats
from dreamd.trainers.model_store import LoadedModel
from dreamd.trainers.words import stems

COMPOSE_INSTRUCTION = (
    "Write a new message that a user could send to an assistant: a new situation or question that "
    "combines ideas from these fragments, and is not a copy of any of them. Write only the user's "
    "message, in the user's own words."
)
# The reply is started for the model as an opened quotation of the user (a small model otherwise
# answers the fragments as an assistant, or describes the task); the closing quote, or the start
# of another speaker, ends the scenario.
COMPOSE_PREFILL = 'User: "'
SCENARIO_STOPS = ('"', "\nAssistant:", "\nassistant:", "\nUser:", "<|im_start|>")
RESPONSE_STOPS = ("<|im_start|>", "\nUser:", "\nuser:")
_PREAMBLE = re.compile(r"^(sure|okay|ok|here(?:'s| is)|certainly|of course)\b[^\n:]*[:!.]\s*", re.IGNORECASE)
_SPEAKER = re.compile(r"^\s*\**\s*(?:user's message|new message|message|user)\s*\**\s*:\s*\**\s*", re.IGNORECASE)


@dataclass
class Dream:
    """One dream and its provenance; the signal agent fills in the scores and the decision."""

    node_ids: list[int]
    walk: list[list[int]]  # the collision's paths: node ids from node_ids[0] to each later member
    fragments: list[str]  # the memories as the model saw them (compressed), newest first
    temperature: float
    kind: str = "join"  # which question the dream asks (scenarios.KINDS)
    scenario: str = ""
    response: str = ""
    logged_answer: str | None = None  # the member's own answer, for kinds that ask its question
    target: str = "teacher"  # whose answer is trained on: the teacher's, or the logged one (replay)
    scenario_tokens: int = 0
    response_tokens: int = 0
    failure: str | None = None  # why generation gave no usable dream
    scores: dict = field(default_factory=dict)  # name -> signal_agent.Score
    total: float | None = None
    accepted: bool = False
    reasons: list[str] = field(default_factory=list)
    vector: object = None  # unit embedding of scenario + response (numpy), set by the novelty scorer
    teacher: SoftTargets | None = None  # the teacher's top-k over its answer (signal_agent.divergences)
    id: int | None = None  # its row in the dreams table, once stored

    @property
    def generated_tokens(self) -> int:
        return self.scenario_tokens + self.response_tokens


def compress(tokenizer, texts: list[str], budget: int) -> list[str]:
    """Each text cut to an equal share of `budget` tokens. A long memory keeps its start and its
    end (the question and how it was answered), joined by an ellipsis."""
    share = max(8, budget // max(len(texts), 1))
    out = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= share:
            out.append(text.strip())
            continue
        head = (share * 2) // 3
        tail = share - head
        out.append(tokenizer.decode(ids[:head]).strip() + " … " + tokenizer.decode(ids[-tail:]).strip())
    return out


def composition_chat(fragments: list[str]) -> list[dict]:
    listed = "\n\n".join(f"[{i}] {text}" for i, text in enumerate(fragments, start=1))
    return [{"role": "user", "content": f"Fragments of earlier conversations:\n\n{listed}\n\n{COMPOSE_INSTRUCTION}"}]


NO_RESPONSE = "the model gave no response"
NOTES_HEADER = ("Notes from earlier conversations with this user, newest first (a newer note corrects an "
                "older one). Answer from these notes.")


def memory_chat(fragments: list[str], scenario: str) -> list[dict]:
    """The scenario with its memories as notes in the system message: the teacher's context, and
    the divergence scorer's "with" side. With no fragments, the same chat with the notes left out
    (the scorer's "without" side), so the two differ only in the memories, not in the system
    prompt the template would otherwise add."""
    listed = "\n\n".join(fragments) if fragments else "(none)"
    return [{"role": "system", "content": f"{NOTES_HEADER}\n\n{listed}"},
            {"role": "user", "content": scenario}]


def extract_scenario(text: str) -> str:
    """The user message inside what the model wrote: no "Sure, here is..." preamble, no speaker
    label, no surrounding quotes."""
    text = text.strip()
    text = _PREAMBLE.sub("", text, count=1).strip()
    text = _SPEAKER.sub("", text, count=1).strip()
    if len(text) >= 2 and text[0] in "\"'“" and text[-1] in "\"'”":
        text = text[1:-1].strip()
    return text


def temperatures(settings: DreamSettings, count: int) -> list[float]:
    """The composition temperature of each dream of a cycle (see `temperature_schedule`)."""
    if settings.temperature_schedule == "constant" or count == 1:
        return [settings.temperature] * count
    low, high = settings.temperature_min, settings.temperature
    return [round(low + (high - low) * i / (count - 1), 4) for i in range(count)]


def answers_about(db: Database, exchange: Exchange, members: list[tuple[int, str]]) -> list[str]:
    """The logged answers, in the members' order, of the exchanges that name the topic of
    `exchange`'s question: a cluster can hold a similar concept's memories, whose answers are not
    what the model knows about this one."""
    topic = stems(topic_of(exchange.question))
    out = []
    for node_id, _text in members:
        found = member_exchange(db, node_id)
        if found is not None and topic <= stems(f"{found.question} {found.answer}"):
            out.append(found.answer)
    return out


def new_dreams(db: Database, tokenizer, collisions: list[Collision], settings: DreamSettings, seed: int,
               exclude: frozenset[int] = frozenset()) -> list[Dream]:
    """One dream per collision: its kind, its notes (newest first) and, unless it is a `join`, its
    scenario. Memories in `exclude` (held out for the gate) are neither notes nor questions."""
    rng = random.Random(seed)
    temps = temperatures(settings, len(collisions))
    dreams = []
    for index, (collision, temp) in enumerate(zip(collisions, temps)):
        members = [(n, t) for n, t in zip(collision.node_ids, collision.texts) if n not in exclude]
        newest_first = sorted(members, key=lambda member: member[0], reverse=True)
        dream = Dream(list(collision.node_ids), [list(p) for p in collision.paths],
                      compress(tokenizer, [t for _n, t in newest_first], settings.fragment_tokens), temp,
                      kind=kind_of(index, settings.kinds))
        if not members:
            dream.failure = "every memory of the collision is held out for evaluation"
        elif dream.kind != "join":
            exchange = member_exchange(db, members[0][0])
            dream.scenario, dream.logged_answer = scenario_for(dream.kind, exchange, rng)
            if dream.kind == "about":  # what it knows about X: the logged answers of the members about X
                dream.logged_answer = " ".join(answers_about(db, exchange, newest_first)) or dream.logged_answer
            if not dream.scenario:
                dream.kind = "join"  # the memory holds no question and answer to ask again
        dreams.append(dream)
    return dreams


def _generate(loaded: LoadedModel, dreams: list[Dream], chats: list[list[dict]], settings: DreamSettings,
              max_new_tokens: int, temps: list[float], stops: tuple[str, ...], seed: int, batch_size: int,
              prefill: str = ""):
    """Generation in batches of `batch_size`; a batch that raises fails its dreams, not the cycle."""
    out: list[Generation | None] = []
    for start in range(0, len(chats), batch_size):
        chunk = chats[start : start + batch_size]
        try:
            out += generate_chats(loaded, chunk, max_new_tokens, len(chunk), temps[start : start + batch_size],
                                  stops, settings.generation_timeout_seconds, prefill, seed=seed + start)
        except Exception as exc:  # any failure of the model or tokenizer: recorded, not raised
            for dream in dreams[start : start + batch_size]:
                dream.failure = dream.failure or f"generation failed: {type(exc).__name__}: {exc}"[:500]
            out += [None] * len(chunk)
    return out


def compose(loaded: LoadedModel, dreams: list[Dream], settings: DreamSettings, seed: int,
            batch_size: int | None = None) -> None:
    """Write the scenario of each `join` dream (in place); the other kinds have theirs already."""
    size = batch_size or settings.batch_size
    dreams = [d for d in dreams if d.kind == "join" and d.failure is None]
    chats = [composition_chat(d.fragments) for d in dreams]
    made = _generate(loaded, dreams, chats, settings, settings.scenario_tokens, [d.temperature for d in dreams],
                     SCENARIO_STOPS, seed, size, prefill=COMPOSE_PREFILL)
    for dream, generation in zip(dreams, made):
        if generation is None:
            continue
        dream.scenario_tokens = generation.tokens
        dream.scenario = extract_scenario(generation.text)
        if generation.finish == "timeout":
            dream.failure = ("generation timed out composing the scenario "
                             f"(over {settings.generation_timeout_seconds:g} s)")
        elif not dream.scenario:
            dream.failure = "composition produced no scenario"


def play_out(loaded: LoadedModel, dreams: list[Dream], settings: DreamSettings, seed: int,
             batch_size: int | None = None) -> None:
    """The teacher's answer to each scenario: the model with the dream's memories as notes (in place)."""
    size = batch_size or settings.batch_size
    live = [d for d in dreams if d.failure is None]
    chats = [memory_chat(d.fragments, d.scenario) for d in live]
    made = _generate(loaded, live, chats, settings, settings.response_tokens,
                     [settings.response_temperature] * len(live), RESPONSE_STOPS, seed + 100_003, size)
    for dream, generation in zip(live, made):
        if generation is None:
            continue
        dream.response, dream.response_tokens = generation.text, generation.tokens
        if generation.finish == "timeout":
            dream.failure = ("generation timed out playing the dream out "
                             f"(over {settings.generation_timeout_seconds:g} s)")
        elif not dream.response:
            dream.failure = NO_RESPONSE


def dream(db: Database, loaded: LoadedModel, collisions: list[Collision], settings: DreamSettings, seed: int,
          batch_size: int | None = None, exclude: frozenset[int] = frozenset()) -> list[Dream]:
    """Ask and play out one dream per collision (not yet scored or stored)."""
    dreams = new_dreams(db, loaded.tokenizer, collisions, settings, seed, exclude)
    compose(loaded, dreams, settings, seed, batch_size)
    play_out(loaded, dreams, settings, seed, batch_size)
    return dreams
