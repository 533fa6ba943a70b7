"""Helpers for the dream tests: a memory graph built from the bundled sample logs, and a scripted
generator that stands in for the model where the logic around generation is what is tested."""

from __future__ import annotations

import re
from pathlib import Path

from dreamd.daemon.cli.demo import sample_files
from dreamd.daemon.service.state_dir import StateLayout
from dreamd.memory_graph.ingest import Ingester
from dreamd.memory_graph.settings import GraphSettings, InboxSettings
from dreamd.trainers.generate import Generation
from dreamd.trainers.model_store import LoadedModel
from tests.helpers.fakes import HashEmbedder
from tests.helpers.tiny import tiny_llama, tiny_tokenizer

GRAPH = GraphSettings(min_similarity=0.2)


def sample_graph(root: Path, embedder=None) -> Ingester:
    """The six sample logs ingested into a fresh state dir (the cheap hash embedder by default)."""
    layout = StateLayout(root).ensure()
    ingester = Ingester(layout.inbox, layout.database, embedder or HashEmbedder(), InboxSettings(stable_seconds=0.0),
                        GRAPH)
    dropped = {ingester.inbox.drop(path).name for path in sample_files()}
    ingester.drain(trusted=frozenset(dropped))
    return ingester


def tiny_loaded() -> LoadedModel:
    return LoadedModel(tiny_llama(), tiny_tokenizer(), Path("tiny-llama"))


class ScriptedGenerator:
    """Replaces trainers.generate.generate_chats: composition prompts get a scenario naming the
    first words of each fragment; the teacher's play-out (a chat opening with the notes as its
    system message) gets an answer made of the first note's words, so it is grounded in the notes
    (or `teacher_answer` when given, to script an answer that is not); judge prompts get
    `judge_answer`; any other chat gets a generic answer. `fail_on` ("compose", "respond" or
    "judge") raises there; `timeout_on` ends those rows as timed out. `conversations` keeps every
    chat it was given, with its kind."""

    def __init__(self, judge_answer: str = " 8", fail_on: str | None = None, timeout_on: str | None = None,
                 teacher_answer: str | None = None):
        self.judge_answer, self.fail_on, self.timeout_on = judge_answer, fail_on, timeout_on
        self.teacher_answer = teacher_answer
        self.calls: list[tuple[str, int]] = []
        self.conversations: list[tuple[str, list[dict]]] = []

    def __call__(self, loaded, conversations, max_new_tokens=64, batch_size=16, temperature=0.0,
                 stop_strings=(), max_seconds=None, prefill="", seed=None) -> list[Generation]:
        out = []
        for conversation in conversations:
            text = conversation[-1]["content"]
            kind = ("compose" if text.startswith("Fragments of earlier conversations") else
                    "judge" if "Assistant's reply:" in text else "respond")
            self.calls.append((kind, len(conversations)))
            self.conversations.append((kind, conversation))
            if kind == self.fail_on:
                raise RuntimeError(f"scripted failure while {kind}")
            if kind == "compose":
                words = re.findall(r"\[\d+\] (?:User: )?(\w+ \w+ \w+)", text)
                reply = f"How would {' and '.join(words)} fit together in my week of {len(words)} plans?"
            elif kind == "judge":
                reply = self.judge_answer
            elif is_teacher_chat(conversation):
                reply = self.teacher_answer if self.teacher_answer is not None else notes_answer(conversation)
            else:
                reply = f"Here is a considered answer about {text[:40]!r}, with two concrete steps to try."
            finish = "timeout" if kind == self.timeout_on else "stop"
            out.append(Generation(reply, len(reply) // 4, finish))
        return out


def is_teacher_chat(conversation: list[dict]) -> bool:
    """Whether a chat is the teacher's play-out: the dream's notes as its opening system message."""
    from dreamd.daemon.dreaming.dreams import NOTES_HEADER

    first = conversation[0]
    return first["role"] == "system" and first["content"].startswith(NOTES_HEADER)


def notes_answer(conversation: list[dict], words: int = 12) -> str:
    """An answer from the notes, which grounding finds in the memories by construction: the
    logged answer of the note whose question the scenario asks (so it agrees with it), else the
    first words of the first note (after the header)."""
    from dreamd.daemon.dreaming.dreams import NOTES_HEADER

    notes = conversation[0]["content"][len(NOTES_HEADER):].strip().split("\n\n")
    scenario = conversation[-1]["content"]
    for note in notes:
        question, _, answer = note.partition("\nAssistant: ")
        if answer and question.removeprefix("User: ").strip() in scenario:
            return " ".join(answer.split()[:words])
    return " ".join(notes[0].split()[:words])


def install_scripted(monkeypatch, **kwargs) -> ScriptedGenerator:
    """A ScriptedGenerator in place of generation, wherever dreaming and the signal agent call it."""
    from dreamd.daemon.dreaming import dreams, signal_agent

    generator = ScriptedGenerator(**kwargs)
    monkeypatch.setattr(dreams, "generate_chats", generator)
    monkeypatch.setattr(signal_agent, "generate_chats", generator)
    return generator
