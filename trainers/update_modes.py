"""What a training round may change: a LoRA adapter (the default) or all weights but the embeddings.

`lora` wraps the model with a PEFT adapter on the configured projections: a few MB per checkpoint,
and the base weights stay untouched. `full` trains every weight except the token embeddings (and
an output head tied to them): the embeddings hold every token's meaning, a few dream steps should
not move tokens the examples never show, and freezing them also keeps APOLLO's state tiny.
"""

from __future__ import annotations

import math

import torch

from dreamd.trainers.apollo import Apollo
from dreamd.trainers.device import projection_dtype
from dreamd.trainers.settings import TrainingSettings

ADAPTER_NAME = "default"


def make_lora(model, settings: TrainingSettings):
    """A new, trainable LoRA adapter around `model` (changes `model` in place, as PEFT does)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=settings.lora_rank,
        lora_alpha=settings.lora_alpha,
        lora_dropout=0.0,  # dropout would make the frozen and full-sequence losses differ
        target_modules=list(settings.lora_target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def load_lora(model, adapter_dir, trainable: bool = True):
    """The adapter saved in `adapter_dir` (PEFT format, safetensors) around `model`."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=trainable)


def set_full_trainable(model, settings: TrainingSettings):
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    if not settings.train_embeddings:
        # With tied weights the output head IS the embedding matrix, so this freezes both.
        model.get_input_embeddings().weight.requires_grad_(False)
    return model


def trainable_parameters(model) -> list[tuple[str, torch.nn.Parameter]]:
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def make_optimizer(model, settings: TrainingSettings, lr: float | None = None) -> torch.optim.Optimizer:
    params = [p for _name, p in trainable_parameters(model)]
    lr = settings.learning_rate if lr is None else lr
    if settings.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=settings.weight_decay)
    return Apollo(
        params,
        lr=lr,
        weight_decay=settings.weight_decay,
        rank=settings.apollo_rank,
        update_proj_gap=settings.apollo_update_proj_gap,
        seed=settings.seed,
        projection_dtype=projection_dtype(settings.apollo_projection_dtype,
                                          params[0].device if params else torch.device("cpu")),
    )


def clip_and_check(model, max_norm: float) -> float:
    """Clip the global gradient norm (when max_norm > 0); return the norm before clipping
    (inf or nan when some gradient is not finite: the caller drops that step)."""
    params = [p for _name, p in trainable_parameters(model) if p.grad is not None]
    if not params:
        return 0.0
    if max_norm > 0:
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm, error_if_nonfinite=False))
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
    return float(total)


def is_finite(value: float) -> bool:
    return math.isfinite(value)
