"""Shared fixtures: a seeded world for every test, and one converted copy of the real default
model per test session (converting takes ~20 s; loading the copy afterwards well under a second)."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def seeded():
    import torch

    random.seed(1234)
    np.random.seed(1234)
    torch.manual_seed(1234)


@pytest.fixture(autouse=True)
def no_stray_config(monkeypatch, tmp_path):
    """Tests never read a developer's ./dreamd.toml or /etc config, nor write into ./state."""
    monkeypatch.delenv("DREAMD_CONFIG", raising=False)
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.setenv("DREAMD_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    """A models/ folder holding the embedded default, converted from its GGUF once per session."""
    from dreamd.trainers.model_store import EMBEDDED_NAME, convert_gguf, embedded_gguf_path

    folder = tmp_path_factory.mktemp("models")
    convert_gguf(embedded_gguf_path(), folder / EMBEDDED_NAME)
    return folder


@pytest.fixture(scope="session")
def default_model_dir(models_dir):
    from dreamd.trainers.model_store import EMBEDDED_NAME

    return models_dir / EMBEDDED_NAME


@pytest.fixture(scope="session")
def default_anchor_cache(models_dir, default_model_dir):
    """The base default model's answers to the anchor bank, answered once per session; a test
    that runs a real cycle copies it into its state dir (tests/helpers/anchors.py says why)."""
    from dreamd.trainers.anchors import base_anchors, cache_path
    from dreamd.trainers.model_store import load_model
    from dreamd.trainers.settings import ModelSettings

    base_anchors(default_model_dir, models_dir, lambda: load_model(ModelSettings(device="cpu"), models_dir))
    return cache_path(models_dir, default_model_dir)
