"""Crashes and corruption around training and checkpoints: SIGKILL at every phase of a write,
damaged weight files, a planted pickle, and a kill in the middle of training."""

import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dreamd.trainers.checkpoints.manifest import (
    MANIFEST,
    CheckpointError,
    checkpoint_dir,
    checkpoint_ids,
    clean_staging,
    verify_checkpoint,
)
from dreamd.trainers.checkpoints.pointers import BASE, read_pointer, set_pointer, verify_loadable
from dreamd.trainers.checkpoints.weights import ADAPTER_DIR, OPTIMIZER_TENSORS, load_weights
from dreamd.trainers.round import start_trainer, train_round
from dreamd.trainers.settings import TrainingSettings
from tests.helpers.tiny import tiny_llama
from tests.helpers.train import chats, state, tiny_loaded

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("crash_worker.py")
SETTINGS = TrainingSettings(mode="lora", lora_learning_rate=1e-2, batch_size=2, epochs=1)


def run_worker(*args) -> tuple[int, list[str]]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, str(WORKER), *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    return done.returncode, [line.split()[1] for line in done.stdout.splitlines() if line.startswith("ID ")]


@pytest.mark.parametrize(
    "phase, survives",
    [("writing", False), ("files_written", False), ("files_synced", False), ("manifest_written", False),
     ("renamed", True)],
)
def test_sigkill_during_a_checkpoint_write(tmp_path, phase, survives):
    layout = state(tmp_path)
    _code, printed = run_worker("write", layout.root, phase)
    first = printed[0]
    leftovers = sorted(p.name for p in layout.checkpoints.glob("*.tmp"))
    assert bool(leftovers) is not survives  # killed before the rename: a .tmp is left behind
    published = checkpoint_ids(layout.checkpoints)  # ... which is never taken for a checkpoint
    others = [cid for cid in published if cid != first]
    if survives:  # renamed, only the folder's fsync missing: complete, and it verifies
        assert published == [first, others[0]] and verify_loadable(layout, others[0]).parent == first
    else:
        assert published == [first]
    assert clean_staging(layout.checkpoints) == leftovers  # garbage, removable at any time
    assert not list(layout.checkpoints.glob("*.tmp")) and checkpoint_ids(layout.checkpoints) == published
    for checkpoint in published:  # every published checkpoint loads whole
        model = load_weights(layout, checkpoint, tiny_llama)
        assert model(torch.tensor([[5, 6]])).logits.isfinite().all()


@pytest.mark.parametrize("damage", ["truncate", "bitflip"])
def test_a_damaged_weight_file_is_refused_naming_it_and_its_parent_still_loads(tmp_path, damage):
    layout = state(tmp_path)
    parent = train_round(tiny_loaded(), chats(2), SETTINGS, layout)
    child = train_round(tiny_loaded(), chats(2, "b"), SETTINGS, layout, parent_id=parent)
    weights = checkpoint_dir(layout.checkpoints, child) / ADAPTER_DIR / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) - 100] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as refused:
        verify_checkpoint(layout.checkpoints, child)
    assert refused.value.path == weights and "adapter_model.safetensors" in str(refused.value)
    with pytest.raises(CheckpointError) as refused:
        set_pointer(layout, "current", child)  # a pointer is never moved onto it
    assert refused.value.path == weights and read_pointer(layout, "current") == BASE
    layout.current_pointer.write_text(child + "\n")  # as if the pointer had been set before the damage
    with pytest.raises(CheckpointError) as refused:
        load_weights(layout, read_pointer(layout, "current"), tiny_llama)  # loading verifies first
    assert refused.value.path == weights
    model = load_weights(layout, parent, tiny_llama)
    assert model(torch.tensor([[5, 6]])).logits.isfinite().all()


class Payload:
    """Unpickling this runs `touch MARKER`: the test proves it never happens."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("rehash", [False, True])
def test_a_planted_pickle_is_refused_and_never_runs(tmp_path, rehash):
    import hashlib
    import json

    layout = state(tmp_path)
    parent = train_round(tiny_loaded(), chats(2), SETTINGS, layout)
    child = train_round(tiny_loaded(), chats(2, "b"), SETTINGS, layout, parent_id=parent)
    folder = checkpoint_dir(layout.checkpoints, child)
    marker = tmp_path / "payload_ran"
    planted = folder / OPTIMIZER_TENSORS
    planted.write_bytes(pickle.dumps(Payload(marker)))
    (folder / "optimizer.pt").write_bytes(pickle.dumps(Payload(marker)))
    if rehash:  # an attacker who also rewrites the manifest's hashes is still refused
        manifest = json.loads((folder / MANIFEST).read_text())
        for rel in (OPTIMIZER_TENSORS, "optimizer.pt"):
            manifest["files"][rel] = hashlib.sha256((folder / rel).read_bytes()).hexdigest()
        (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="optimizer"):
        verify_checkpoint(layout.checkpoints, child)
    with pytest.raises(CheckpointError):
        start_trainer(tiny_loaded(), SETTINGS, layout, parent_id=child)  # resuming from it: refused
    with pytest.raises(CheckpointError):
        load_weights(layout, child, tiny_llama)  # loading it: refused
    assert verify_loadable(layout, parent).id == parent  # its parent is untouched
    assert not marker.exists()


def test_kill_during_training_then_resume_restores_what_was_saved(tmp_path):
    layout = state(tmp_path)
    ref_path = tmp_path / "saved.safetensors"
    _code, printed = run_worker("train", layout.root, ref_path)
    saved = printed[0]
    assert checkpoint_ids(layout.checkpoints) == [saved]  # the killed round left nothing published
    verify_loadable(layout, saved)
    ref = load_file(str(ref_path))
    torch.manual_seed(999)  # disturb the RNG: resuming must restore it
    trainer = start_trainer(tiny_loaded(), SETTINGS, layout, parent_id=saved)
    from peft import get_peft_model_state_dict

    adapter = get_peft_model_state_dict(trainer.model)
    for key, value in adapter.items():
        assert torch.equal(value, ref[f"adapter/{key}"]), key
    assert torch.equal(torch.tensor([float(s["step"]) for s in trainer.optimizer.state.values()]),
                       ref["optimizer/steps"])
    assert trainer.step == 2
    assert torch.equal(torch.get_rng_state(), ref["rng/torch"])
    assert torch.equal(trainer.generator.get_state(), ref["rng/order"])
