"""One training round: from a parent checkpoint, a few context-frozen optimizer steps on the
round's examples, then a new checkpoint (a candidate: the quality gate decides what `current` is).

A round resumes exactly where its parent left off: the weights, the optimizer state (APOLLO's
moments and projections), the step count and the RNG state that orders the examples all come
back from the parent's files, so training A then B in one go or from a reloaded A gives the same
weights. A round runs in a child process of the daemon, and it takes over `loaded.model` (PEFT
wraps it in place; full mode changes its weights): load the model again to use the base.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog
import torch

from dreamd.trainers.checkpoints import weights as io
from dreamd.trainers.checkpoints.manifest import Manifest, checkpoint_dir, new_checkpoint_id, write_checkpoint
from dreamd.trainers.checkpoints.pointers import BASE, CheckpointRoots, apply_retention, verify_loadable
from dreamd.trainers.checkpoints.space import checkpoint_bytes_needed, require_free_space
from dreamd.trainers.context_frozen import loss_step
from dreamd.trainers.examples import EncodedExample, TrainingExample, encode_examples
from dreamd.trainers.model_store import LoadedModel
from dreamd.trainers.settings import TrainingSettings
from dreamd.trainers.update_modes import (
    clip_and_check,
    is_finite,
    load_lora,
    make_lora,
    make_optimizer,
    set_full_trainable,
    trainable_parameters,
)

log = structlog.get_logger(__name__)


@dataclass
class StepResult:
    loss: float
    grad_norm: float
    applied: bool


def train_step(model, optimizer, batch: list[EncodedExample], pad_id: int, grad_clip: float,
               loss_fn: Callable | None = None, soft_weight: float = 1.0) -> StepResult:
    """One optimizer step on one batch; a step whose loss or gradient is not finite is dropped
    (weights and optimizer state untouched) and logged. `loss_fn` defaults to the context-frozen step;
    the memory-formation experiment's baseline passes plain completion-only backprop. An anchor's
    loss counts `soft_weight` times a fact's (TrainingSettings.anchor_weight)."""
    optimizer.zero_grad(set_to_none=True)
    loss = (loss_fn or loss_step)(model, batch, pad_id, soft_weight=soft_weight)
    value = float(loss.detach())
    if not is_finite(value):
        log.warning("dropped a training step: loss is not finite", loss=value, examples=[e.id for e in batch])
        return StepResult(value, float("nan"), applied=False)
    loss.backward()
    norm = clip_and_check(model, grad_clip)
    if not is_finite(norm):
        optimizer.zero_grad(set_to_none=True)
        log.warning("dropped a training step: gradient is not finite", grad_norm=norm,
                    examples=[e.id for e in batch])
        return StepResult(value, norm, applied=False)
    optimizer.step()
    return StepResult(value, norm, applied=True)


@dataclass
class Trainer:
    """The model, optimizer and RNG of a lineage, ready to train and to save."""

    model: object
    tokenizer: object
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    settings: TrainingSettings
    parent: str = BASE
    step: int = 0
    base_weights: str | None = None
    model_dir: str = ""
    history: list[StepResult] = field(default_factory=list)
    example_ids: list[str] = field(default_factory=list)
    loss_fn: Callable | None = None  # None: the context-frozen step

    @property
    def names(self) -> list[str]:
        return [name for name, _p in trainable_parameters(self.model)]

    def run(self, encoded: list[EncodedExample], on_step: Callable[[int, StepResult], None] | None = None):
        self.model.train()
        pad_id = self.tokenizer.pad_token_id
        size = self.settings.batch_size
        for _epoch in range(self.settings.epochs):
            order = torch.randperm(len(encoded), generator=self.generator).tolist()
            for start in range(0, len(order), size):
                batch = [encoded[i] for i in order[start : start + size]]
                result = train_step(self.model, self.optimizer, batch, pad_id, self.settings.grad_clip, self.loss_fn,
                                    self.settings.anchor_weight)
                self.step += int(result.applied)
                self.history.append(result)
                if on_step:
                    on_step(self.step, result)
        self.example_ids += [e.id for e in encoded]
        self.model.eval()
        return self

    def save(self, layout: CheckpointRoots, on_phase=None) -> str:
        applied = [r.loss for r in self.history if r.applied]
        manifest = Manifest(
            id=new_checkpoint_id(), parent=None if self.parent == BASE else self.parent, step=self.step,
            created_at=time.time(), mode=self.settings.mode,
            config={"training": dataclasses.asdict(self.settings), "model_dir": self.model_dir},
            files={}, examples=list(self.example_ids), base_weights=self.base_weights,
            metrics={"steps": len(self.history), "dropped_steps": sum(not r.applied for r in self.history),
                     "first_loss": applied[0] if applied else None, "last_loss": applied[-1] if applied else None},
        )

        def write_files(folder: Path) -> None:
            io.save_weights(self.model, self.tokenizer, self.settings.mode, folder)
            io.save_optimizer(self.optimizer, self.names, folder)
            io.save_rng(self.generator, folder)

        layout.checkpoints.mkdir(parents=True, exist_ok=True)
        write_checkpoint(layout.checkpoints, manifest, write_files, on_phase=on_phase)
        log.info("checkpoint written", checkpoint=manifest.id, parent=manifest.parent, step=self.step,
                 mode=manifest.mode, **manifest.metrics)
        return manifest.id


def start_trainer(
    loaded: LoadedModel, settings: TrainingSettings, layout: CheckpointRoots, parent_id: str = BASE
) -> Trainer:
    """Everything a round needs, restored from `parent_id` (a verified checkpoint, or `base`)."""
    parent_id = parent_id or BASE
    manifest = verify_loadable(layout, parent_id) if parent_id != BASE else None
    generator = torch.Generator().manual_seed(settings.seed)
    def base_factory():  # `loaded.model` itself: taken over, see the module's docstring
        return loaded.model

    base_weights = None
    same_kind = manifest is not None and manifest.mode == settings.mode

    if manifest is None:
        model = make_lora(loaded.model, settings) if settings.mode == "lora" else loaded.model
    elif settings.mode == "lora" and manifest.mode == "lora":
        folder = checkpoint_dir(layout.checkpoints, parent_id)
        base = io.load_weights(layout, manifest.base_weights, base_factory) if manifest.base_weights else loaded.model
        model, base_weights = load_lora(base, folder / io.ADAPTER_DIR, trainable=True), manifest.base_weights
    elif settings.mode == "lora":  # an adapter on top of a full-weight checkpoint
        model = make_lora(io.load_weights(layout, parent_id, base_factory), settings)
        base_weights = parent_id
    else:  # full mode; a LoRA parent is merged into the weights first
        model = io.load_weights(layout, parent_id, base_factory)
        if manifest.mode == "lora":
            model = model.merge_and_unload()
    if settings.mode == "full":
        set_full_trainable(model, settings)
    model.to(next(loaded.model.parameters()).device)

    optimizer = make_optimizer(model, settings)
    trainer = Trainer(model, loaded.tokenizer, optimizer, generator, settings, parent=parent_id,
                      step=manifest.step if manifest else 0, base_weights=base_weights,
                      model_dir=str(loaded.directory))
    if same_kind:
        folder = checkpoint_dir(layout.checkpoints, parent_id)
        if not io.load_optimizer(optimizer, trainer.names, folder):
            log.info("parent's optimizer state does not fit (optimizer or parameters changed); starting fresh")
        io.load_rng(folder, generator)
    return trainer


def parameter_bytes(parameters) -> int:
    return sum(p.numel() * p.element_size() for p in parameters)


def train_round(
    loaded: LoadedModel,
    examples: list[TrainingExample],
    settings: TrainingSettings,
    layout: CheckpointRoots,
    parent_id: str = BASE,
    on_step: Callable[[int, StepResult], None] | None = None,
    on_phase: Callable[[str], None] | None = None,
    loss_fn: Callable | None = None,
) -> str:
    """Train on `examples` from `parent_id` and write a new checkpoint; returns its id."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # a daemon's journal needs no progress bars
    trainer = start_trainer(loaded, settings, layout, parent_id)
    trainer.loss_fn = loss_fn
    # Refuse now, not after the training, a round whose checkpoint would not fit on the disk.
    layout.checkpoints.mkdir(parents=True, exist_ok=True)
    require_free_space(layout.checkpoints, checkpoint_bytes_needed(
        layout.checkpoints, settings.mode, parameter_bytes(p for _n, p in trainable_parameters(trainer.model)),
        parameter_bytes(trainer.model.parameters())))
    encoded = encode_examples(loaded.tokenizer, examples, settings.max_context_tokens)
    trainer.run(encoded, on_step=on_step)
    checkpoint_id = trainer.save(layout, on_phase=on_phase)
    apply_retention(layout, settings.keep_checkpoints)
    return checkpoint_id
