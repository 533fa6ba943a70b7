"""`dreamctl ask` answers with the model that learned: the checkpoint `current` names."""

import json

from click.testing import CliRunner

from dreamd.daemon.cli.dreamctl import main as dreamctl
from dreamd.daemon.service.state_dir import StateLayout
from dreamd.trainers.checkpoints.pointers import BASE, set_pointer
from dreamd.trainers.checkpoints.weights import load_as
from dreamd.trainers.generate import chat_reply
from dreamd.trainers.model_store import load_model
from dreamd.trainers.round import train_round
from dreamd.trainers.settings import ModelSettings, TrainingSettings
from tests.helpers.daemon_harness import save_tiny_model
from tests.helpers.train import chats

QUESTION = "Tell me about the zorb."


def ask(config, *args):
    return CliRunner().invoke(dreamctl, ["--config", str(config), "ask", QUESTION, "--max-new-tokens", "8", *args])


def reply_of(settings, layout, checkpoint):
    loaded = load_as(settings, layout.models, layout, checkpoint)
    return chat_reply(loaded, [{"role": "user", "content": QUESTION}], max_new_tokens=8)


def test_ask_answers_with_current_unless_told_otherwise(tmp_path):
    model_dir = save_tiny_model(tmp_path / "tiny-model")
    config = tmp_path / "dreamd.toml"
    config.write_text(f'[model]\npath = "{model_dir}"\ndevice = "cpu"\n')
    layout = StateLayout(tmp_path / "state").ensure()  # the state dir the tests' environment names
    settings = ModelSettings(path=str(model_dir), device="cpu")
    trained = train_round(load_model(settings, layout.models), chats(4),
                          TrainingSettings(batch_size=2, lora_learning_rate=5e-2, optimizer="adamw", epochs=3), layout)

    assert json.loads(ask(config, "--json").output)["checkpoint"] == BASE  # nothing promoted yet
    set_pointer(layout, "current", trained)
    current = json.loads(ask(config, "--json").output)
    assert current["checkpoint"] == trained
    assert current["answer"] == reply_of(settings, layout, trained)
    base = json.loads(ask(config, "--base", "--json").output)
    assert base["checkpoint"] == BASE and base["answer"] == reply_of(settings, layout, BASE)
    assert json.loads(ask(config, "--checkpoint", trained, "--json").output)["checkpoint"] == trained

    missing = ask(config, "--checkpoint", "20990101-000000-000000-nothere")
    assert missing.exit_code == 1 and "does not verify" in missing.output
    both = ask(config, "--checkpoint", trained, "--base")
    assert both.exit_code == 2
