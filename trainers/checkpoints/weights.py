"""What goes into a checkpoint folder and how it comes back: weights, optimizer state, RNG state.

Weights use the formats other tools load as they are: a PEFT adapter directory (`adapter/`,
adapter_config.json + adapter_model.safetensors) or a Hugging Face model directory (`model/`,
config.json + model.safetensors + tokenizer). Optimizer and RNG state are tensors in safetensors
plus everything else in JSON, so nothing is ever unpickled: no torch.load anywhere.
Callers load only checkpoints that `pointers.verify_loadable` accepted.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from dreamd.trainers.checkpoints.manifest import checkpoint_dir
from dreamd.trainers.checkpoints.pointers import BASE, CheckpointRoots, verify_loadable

ADAPTER_DIR = "adapter"
MODEL_DIR = "model"
OPTIMIZER_TENSORS = "optimizer.safetensors"
OPTIMIZER_JSON = "optimizer.json"
RNG_TENSORS = "rng.safetensors"
RNG_JSON = "rng.json"


# --- weights ---------------------------------------------------------------------------------

def save_weights(model, tokenizer, mode: str, folder: Path) -> None:
    if mode == "lora":
        model.save_pretrained(folder / ADAPTER_DIR, safe_serialization=True)
    else:
        model.save_pretrained(folder / MODEL_DIR, safe_serialization=True)
        tokenizer.save_pretrained(folder / MODEL_DIR)


def load_weights(layout: CheckpointRoots, checkpoint_id: str, base_model_factory, trainable: bool = False):
    """The model a verified checkpoint holds. `base_model_factory()` returns a fresh base model
    (transformers CausalLM); a LoRA checkpoint is put on it (or on the full weights it names)."""
    from transformers import AutoModelForCausalLM

    from dreamd.trainers.update_modes import load_lora

    manifest = verify_loadable(layout, checkpoint_id)
    folder = checkpoint_dir(layout.checkpoints, checkpoint_id)
    if manifest.mode == "full":
        base = base_model_factory()
        model = AutoModelForCausalLM.from_pretrained(
            folder / MODEL_DIR, dtype=base.dtype, local_files_only=True, use_safetensors=True
        ).to(base.device)
        del base
        return model
    if manifest.base_weights:
        base = load_weights(layout, manifest.base_weights, base_model_factory)
    else:
        base = base_model_factory()
    return load_lora(base, folder / ADAPTER_DIR, trainable=trainable)


def load_as(settings, models_dir: Path, layout: CheckpointRoots, checkpoint: str):
    """A LoadedModel: a fresh copy of the base model `settings` name, with `checkpoint`'s weights
    when it is not `base` (verified first). The one way every stage loads a checkpoint to use it.
    A LoRA adapter is merged into the weights: every caller only runs the model, and the merged
    model skips the adapter's extra matmuls (10-20% less CPU time per forward, measured)."""
    from dreamd.trainers.model_store import LoadedModel, load_model

    base = load_model(settings, models_dir)
    if checkpoint == BASE:
        return base
    model = load_weights(layout, checkpoint, lambda: base.model)
    if hasattr(model, "merge_and_unload"):  # a PEFT model
        model = model.merge_and_unload()
    return LoadedModel(model.eval(), base.tokenizer, base.directory)


# --- optimizer state -------------------------------------------------------------------------

def save_optimizer(optimizer: torch.optim.Optimizer, names: list[str], folder: Path) -> None:
    """Tensors to safetensors (keyed `<param name>/<state key>`), the rest to JSON."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, per_param in state["state"].items():
        for key, value in per_param.items():
            if torch.is_tensor(value):
                tensors[f"{names[index]}/{key}"] = value.detach().to("cpu").contiguous()
            else:
                scalars[f"{names[index]}/{key}"] = value
    groups = [{k: v for k, v in group.items()} for group in state["param_groups"]]
    save_file(tensors, str(folder / OPTIMIZER_TENSORS))
    record = {"type": type(optimizer).__name__, "names": names, "param_groups": groups, "scalars": scalars}
    (folder / OPTIMIZER_JSON).write_text(json.dumps(record, indent=1))


def load_optimizer(optimizer: torch.optim.Optimizer, names: list[str], folder: Path) -> bool:
    """Restore a saved state into `optimizer` when it is the same kind over the same parameters;
    False (and untouched) otherwise, e.g. after a change of mode or optimizer."""
    record = json.loads((folder / OPTIMIZER_JSON).read_text())
    if record["type"] != type(optimizer).__name__ or record["names"] != names:
        return False
    tensors = load_file(str(folder / OPTIMIZER_TENSORS))  # safetensors: data only, never code
    state: dict[int, dict] = {}
    for flat, value in [*tensors.items(), *record["scalars"].items()]:
        name, key = flat.rsplit("/", 1)
        state.setdefault(names.index(name), {})[key] = value
    groups = record["param_groups"]
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    return True


# --- RNG state -------------------------------------------------------------------------------

def save_rng(generator: torch.Generator, folder: Path) -> None:
    tensors = {"torch": torch.get_rng_state(), "order": generator.get_state()}
    if torch.cuda.is_available():
        for index, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{index}"] = cuda_state
    save_file(tensors, str(folder / RNG_TENSORS))
    (folder / RNG_JSON).write_text(json.dumps({"python": _jsonable(random.getstate())}))


def load_rng(folder: Path, generator: torch.Generator) -> None:
    tensors = load_file(str(folder / RNG_TENSORS))
    torch.set_rng_state(tensors["torch"])
    generator.set_state(tensors["order"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(tensors) if k.startswith("cuda")]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
    version, internal, gauss = json.loads((folder / RNG_JSON).read_text())["python"]
    random.setstate((version, tuple(internal), gauss))


def _jsonable(value):
    return [_jsonable(v) for v in value] if isinstance(value, (tuple, list)) else value

