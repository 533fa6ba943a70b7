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
    first words of each fragment, scenarios get an answer, judge prompts get `judge_answer`.
    `fail_on` ("compose", "respond" or "judge") raises there; `timeout_on` ends those rows as timed out."""

    def __init__(self, judge_answer: str = " 8", fail_on: str | None = None, timeout_on: str | None = None):
        self.judge_answer, self.fail_on, self.timeout_on = judge_answer, fail_on, timeout_on
        self.calls: list[tuple[str, int]] = []

    def __call__(self, loaded, conversations, max_new_tokens=64, batch_size=16, temperature=0.0,
                 stop_strings=(), max_seconds=None, prefill="", seed=None) -> list[Generation]:
        out = []
        for conversation in conversations:
            text = conversation[-1]["content"]
            kind = ("compose" if text.startswith("Fragments of earlier conversations") else
                    "judge" if "Assistant's reply:" in text else "respond")
            self.calls.append((kind, len(conversations)))
            if kind == self.fail_on:
                raise RuntimeError(f"scripted failure while {kind}")
            if kind == "compose":
                words = re.findall(r"\[\d+\] (?:User: )?(\w+ \w+ \w+)", text)
                reply = f"How would {' and '.join(words)} fit together in my week of {len(words)} plans?"
            elif kind == "judge":
                reply = self.judge_answer
            else:
                reply = f"Here is a considered answer about {text[:40]!r}, with two concrete steps to try."
            finish = "timeout" if kind == self.timeout_on else "stop"
            out.append(Generation(reply, len(reply) // 4, finish))
        return out


def install_scripted(monkeypatch, **kwargs) -> ScriptedGenerator:
    """A ScriptedGenerator in place of generation, wherever dreaming and the signal agent call it."""
    from dreamd.daemon.dreaming import dreams, signal_agent

    generator = ScriptedGenerator(**kwargs)
    monkeypatch.setattr(dreams, "generate_chats", generator)
    monkeypatch.setattr(signal_agent, "generate_chats", generator)
    return generator
