"""`dreamctl review` and `dreamctl export`, on the tiny model and a real SQLite store."""

import json

import torch
from click.testing import CliRunner
from peft import PeftModel
from transformers import AutoModelForCausalLM

from dreamd.daemon.cli.dreamctl import main as dreamctl
from dreamd.daemon.service.state_dir import StateLayout
from dreamd.memory_graph.database.store import open_store, write
from dreamd.trainers.checkpoints.pointers import set_pointer
from dreamd.trainers.model_store import load_model
from dreamd.trainers.round import train_round
from dreamd.trainers.settings import ModelSettings, TrainingSettings
from tests.helpers.tiny import tiny_llama, tiny_tokenizer
from tests.helpers.train import chats


def run(*args):
    return CliRunner().invoke(dreamctl, list(args), catch_exceptions=False)


def add_dream(db, status: str) -> int:
    with write(db):
        return db.execute(
            "INSERT INTO dreams (batch, created_at, model, seed, node_ids, walk, fragments, temperature, scenario, "
            "response, generated_tokens, scores, accepted, reasons, status) "
            "VALUES ('b', 0, 'm', 1, '[1, 2]', '[[1, 2]]', '[]', 0.8, 'a scenario', 'a response', 5, '{}', 1, '[]', ?)",
            (status,)).lastrowid


def test_review_lists_approves_and_rejects_once(tmp_path):
    layout = StateLayout(tmp_path / "state").ensure()
    db = open_store(layout.database)
    first, second, done = add_dream(db, "pending_review"), add_dream(db, "pending_review"), add_dream(db, "accepted")
    listed = json.loads(run("review", "--json").output)["pending"]
    assert [d["id"] for d in listed] == [first, second]
    assert json.loads(run("review", "approve", str(first), "--note", "good", "--json").output)["status"] == "approved"
    assert json.loads(run("review", "reject", str(second), "--json").output)["status"] == "review_rejected"
    again = run("review", "approve", str(second))
    assert again.exit_code == 1 and "not waiting for review" in again.output
    assert run("review", "reject", str(done)).exit_code == 1
    assert "no dreams waiting" in run("review").output


def test_export_adapter_and_merged_model_load_as_they_are(tmp_path):
    model_dir = tmp_path / "tiny-model"
    tiny_llama().save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    config = tmp_path / "dreamd.toml"
    config.write_text(f'[model]\npath = "{model_dir}"\ndevice = "cpu"\n')
    layout = StateLayout(tmp_path / "state").ensure()
    settings = ModelSettings(path=str(model_dir), device="cpu")
    checkpoint = train_round(load_model(settings, layout.models), chats(4),
                             TrainingSettings(batch_size=2, lora_learning_rate=1e-2, optimizer="adamw"), layout)
    set_pointer(layout, "current", checkpoint)

    adapter, merged = tmp_path / "adapter", tmp_path / "merged"
    result = run("--config", str(config), "export", "--to", str(adapter), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["kind"] == "peft adapter"
    assert run("--config", str(config), "export", "--to", str(merged), "--merged").exit_code == 0

    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        from_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), adapter)(ids).logits
        from_merged = AutoModelForCausalLM.from_pretrained(merged)(ids).logits
        base = AutoModelForCausalLM.from_pretrained(model_dir)(ids).logits
    assert torch.allclose(from_adapter, from_merged, atol=1e-4)
    assert not torch.allclose(base, from_merged, atol=1e-4), "the export must carry the training"

    refused = run("--config", str(config), "export", "--to", str(merged))
    assert refused.exit_code == 1 and "not empty" in refused.output
