"""Training rounds, checkpoints, pointers, rollback and retention on the tiny model."""

import json
import math

import pytest
import torch
from click.testing import CliRunner

from dreamd.daemon.cli.dreamctl import main as dreamctl
from dreamd.trainers import context_frozen
from dreamd.trainers import round as round_module
from dreamd.trainers.checkpoints.manifest import MANIFEST, CheckpointError, checkpoint_dir, verify_checkpoint
from dreamd.trainers.checkpoints.pointers import (
    BASE,
    apply_retention,
    keep_set,
    lineage,
    read_pointer,
    rollback,
    set_pointer,
    verify_loadable,
)
from dreamd.trainers.checkpoints.weights import ADAPTER_DIR, MODEL_DIR, load_weights
from dreamd.trainers.round import start_trainer, train_round
from dreamd.trainers.settings import TrainingSettings
from tests.helpers.tiny import tiny_llama
from tests.helpers.train import chats, state, tiny_loaded

LORA = TrainingSettings(mode="lora", lora_learning_rate=1e-2, batch_size=2, epochs=1)
FULL = TrainingSettings(mode="full", full_learning_rate=1e-3, batch_size=2, epochs=1)


def test_a_round_writes_a_complete_verified_checkpoint(tmp_path):
    layout = state(tmp_path)
    examples = chats(4)
    first = train_round(tiny_loaded(), examples, LORA, layout)
    folder = checkpoint_dir(layout.checkpoints, first)
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["id"] == first and manifest["parent"] is None and manifest["step"] == 2
    assert manifest["mode"] == "lora" and manifest["examples"] == [e.id for e in examples]
    assert manifest["config"]["training"]["lora_rank"] == LORA.lora_rank
    files = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()} - {MANIFEST}
    assert set(manifest["files"]) == files and all(len(h) == 64 for h in manifest["files"].values())
    assert f"{ADAPTER_DIR}/adapter_model.safetensors" in files
    assert not any(name.endswith((".bin", ".pt", ".pth", ".pkl")) for name in files)
    verify_checkpoint(layout.checkpoints, first)
    assert not list(layout.checkpoints.glob("*.tmp"))

    second = train_round(tiny_loaded(), chats(2, "f"), LORA, layout, parent_id=first)
    assert verify_checkpoint(layout.checkpoints, second).parent == first
    assert verify_checkpoint(layout.checkpoints, second).step == 3


def test_checkpoints_load_with_peft_and_transformers_as_they_are(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    layout = state(tmp_path)
    adapter = train_round(tiny_loaded(), chats(4), LORA, layout)
    full = train_round(tiny_loaded(), chats(4), FULL, layout)
    ids = torch.tensor([[5, 6, 7, 8]])
    peft_model = PeftModel.from_pretrained(tiny_llama(), str(checkpoint_dir(layout.checkpoints, adapter) / ADAPTER_DIR))
    ours = load_weights(layout, adapter, tiny_llama)
    assert torch.allclose(peft_model(ids).logits, ours(ids).logits, atol=1e-6)
    assert not torch.allclose(peft_model(ids).logits, tiny_llama()(ids).logits, atol=1e-4)  # it learned
    hf = AutoModelForCausalLM.from_pretrained(checkpoint_dir(layout.checkpoints, full) / MODEL_DIR)
    assert torch.allclose(hf(ids).logits, load_weights(layout, full, tiny_llama)(ids).logits, atol=1e-6)


def test_full_mode_freezes_the_embeddings_by_default(tmp_path):
    layout = state(tmp_path)
    before = tiny_llama().get_input_embeddings().weight.detach().clone()
    checkpoint = train_round(tiny_loaded(), chats(4), FULL, layout)
    after = load_weights(layout, checkpoint, tiny_llama)
    assert torch.equal(after.get_input_embeddings().weight, before)
    assert not torch.equal(after.model.layers[0].mlp.up_proj.weight, tiny_llama().model.layers[0].mlp.up_proj.weight)


def test_mode_changes_along_a_lineage_load(tmp_path):
    layout = state(tmp_path)
    full = train_round(tiny_loaded(), chats(2), FULL, layout)
    on_full = train_round(tiny_loaded(), chats(2), LORA, layout, parent_id=full)
    assert verify_checkpoint(layout.checkpoints, on_full).base_weights == full
    merged = train_round(tiny_loaded(), chats(2), FULL, layout, parent_id=on_full)
    assert verify_loadable(layout, merged).id == merged
    model = load_weights(layout, merged, tiny_llama)
    assert model(torch.tensor([[5, 6]])).logits.isfinite().all()
    set_pointer(layout, "current", on_full)
    assert keep_set(layout, keep_last=1) == {merged, on_full, full}  # full: the weights on_full builds on


def test_resume_continues_exactly(tmp_path):
    """Training A then B in one go equals training B from A reloaded from disk."""
    layout = state(tmp_path)
    settings = TrainingSettings(mode="lora", lora_learning_rate=1e-2, batch_size=2, apollo_update_proj_gap=2, epochs=1)
    first, second = chats(4, "a"), chats(5, "b")
    torch.manual_seed(7)
    continuous = start_trainer(tiny_loaded(), settings, layout)
    def encode(ex):
        return round_module.encode_examples(continuous.tokenizer, ex, 512)

    continuous.run(encode(first))
    saved = continuous.save(layout)
    continuous.run(encode(second))

    torch.manual_seed(12345)  # a different global RNG: the checkpoint must restore it
    resumed = start_trainer(tiny_loaded(), settings, layout, parent_id=saved)
    assert resumed.step == 2
    resumed.run(encode(second))
    for (name, a), (_, b) in zip(continuous.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.equal(a, b), name


def test_a_step_with_a_non_finite_loss_is_dropped_and_logged(tmp_path, monkeypatch, caplog):
    layout = state(tmp_path)
    real = context_frozen.loss_step
    calls = []

    def poisoned(model, batch, pad_id, **weights):
        calls.append(1)
        loss = real(model, batch, pad_id, **weights)
        return loss * float("nan") if len(calls) == 1 else loss

    monkeypatch.setattr(round_module, "loss_step", poisoned)
    trainer = start_trainer(tiny_loaded(), LORA, layout)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.run(round_module.encode_examples(trainer.tokenizer, chats(2), 512))  # one batch: the bad one
    assert trainer.step == 0 and trainer.history[0].applied is False and math.isnan(trainer.history[0].loss)
    assert all(torch.equal(p, before[n]) for n, p in trainer.model.named_parameters())
    trainer.run(round_module.encode_examples(trainer.tokenizer, chats(2), 512))
    assert trainer.step == 1
    checkpoint = trainer.save(layout)
    assert verify_checkpoint(layout.checkpoints, checkpoint).metrics["dropped_steps"] == 1


def test_pointers_rollback_is_idempotent_and_verified(tmp_path):
    layout = state(tmp_path)
    a = train_round(tiny_loaded(), chats(2), LORA, layout)
    b = train_round(tiny_loaded(), chats(2), LORA, layout, parent_id=a)
    assert read_pointer(layout, "current") == BASE  # a round makes candidates; it moves no pointer
    set_pointer(layout, "last_good", a)
    set_pointer(layout, "current", b)
    assert rollback(layout) == {"current": a, "previous": b, "changed": True}
    assert rollback(layout) == {"current": a, "previous": a, "changed": False}
    assert rollback(layout, b)["current"] == b
    assert rollback(layout, BASE)["current"] == BASE and read_pointer(layout, "current") == BASE
    (checkpoint_dir(layout.checkpoints, b) / "optimizer.json").write_text("{}")
    with pytest.raises(CheckpointError, match="optimizer.json"):
        rollback(layout, b)
    assert read_pointer(layout, "current") == BASE
    assert not list(layout.root.glob("*.tmp"))


def test_retention_keeps_the_newest_and_every_pointed_one(tmp_path):
    layout = state(tmp_path)
    settings = TrainingSettings(mode="lora", batch_size=4, keep_checkpoints=100)
    ids = [train_round(tiny_loaded(), chats(1), settings, layout)]
    for _ in range(4):
        ids.append(train_round(tiny_loaded(), chats(1), settings, layout, parent_id=ids[-1]))
    set_pointer(layout, "last_good", ids[0])
    set_pointer(layout, "current", ids[1])
    removed = apply_retention(layout, keep_last=2)
    assert removed == [ids[2]]
    assert sorted(p.name for p in layout.checkpoints.iterdir()) == sorted([ids[0], ids[1], ids[3], ids[4]])


def test_unlisted_or_unsafe_files_are_refused(tmp_path):
    layout = state(tmp_path)
    a = train_round(tiny_loaded(), chats(2), LORA, layout)
    extra = checkpoint_dir(layout.checkpoints, a) / "notes.txt"
    extra.write_text("hi")
    with pytest.raises(CheckpointError, match="not listed"):
        verify_checkpoint(layout.checkpoints, a)
    with pytest.raises(CheckpointError, match="not listed"):
        load_weights(layout, a, tiny_llama)  # loading verifies first: the refused one never loads


def test_dreamctl_lists_and_rolls_back(tmp_path):
    layout = state(tmp_path)
    a = train_round(tiny_loaded(), chats(2), LORA, layout)
    b = train_round(tiny_loaded(), chats(2), LORA, layout, parent_id=a)
    set_pointer(layout, "last_good", a)
    set_pointer(layout, "current", b)
    runner = CliRunner()
    listed = runner.invoke(dreamctl, ["--state-dir", str(layout.root), "checkpoints", "--json"])
    assert listed.exit_code == 0, listed.output
    data = json.loads(listed.stdout)
    assert [row["id"] for row in data["checkpoints"]] == [a, b]
    assert data["checkpoints"][1]["parent"] == a and data["checkpoints"][1]["pointers"] == ["current"]
    assert all(row["verified"] for row in data["checkpoints"]) and data["current"] == b
    back = runner.invoke(dreamctl, ["--state-dir", str(layout.root), "rollback", "--json"])
    assert back.exit_code == 0 and json.loads(back.stdout)["current"] == a
    again = runner.invoke(dreamctl, ["--state-dir", str(layout.root), "rollback", "--json"])
    assert json.loads(again.stdout)["changed"] is False
    base = runner.invoke(dreamctl, ["--state-dir", str(layout.root), "rollback", "--to-base", "--json"])
    assert json.loads(base.stdout)["current"] == BASE
    bad = runner.invoke(dreamctl, ["--state-dir", str(layout.root), "rollback", "nosuch"])
    assert bad.exit_code == 1 and "nosuch" in bad.output
    assert lineage(layout)[0]["verified"]
