"""Shared pieces of the training tests: a tiny model wrapped like the real one, and example chats."""

from __future__ import annotations

from pathlib import Path

from dreamd.daemon.service.state_dir import StateLayout
from dreamd.trainers.examples import TrainingExample
from dreamd.trainers.model_store import LoadedModel
from tests.helpers.tiny import tiny_llama, tiny_tokenizer


def tiny_loaded(seed: int = 0) -> LoadedModel:
    return LoadedModel(model=tiny_llama(seed=seed), tokenizer=tiny_tokenizer(), directory=Path("tiny"))


def chats(count: int = 6, prefix: str = "e") -> list[TrainingExample]:
    """Examples of different context and response lengths, with ids."""
    return [
        TrainingExample(
            f"{prefix}{i}",
            [
                {"role": "system", "content": "You remember the team's facts."},
                {"role": "user", "content": "Tell me about the zorb. " * (1 + i % 3) + f"(#{i})"},
                {"role": "assistant", "content": "The zorb is kept in room " + str(40 + i) + "." * (i % 4)},
            ],
        )
        for i in range(count)
    ]


def state(tmp_path) -> StateLayout:
    return StateLayout(tmp_path / "state").ensure()
