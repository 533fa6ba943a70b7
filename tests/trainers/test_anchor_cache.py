"""Where the base model's answers to the anchor bank are cached: one file per base model and bank."""

from __future__ import annotations

import os
import shutil

from dreamd.trainers.anchors import anchor_prompts, cache_path


def test_a_copy_of_the_base_shares_the_cache_and_a_changed_base_does_not(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text('{"hidden_size": 8}')
    (base / "model.safetensors").write_bytes(b"\0" * 64)
    copy = tmp_path / "state" / "models" / "base"
    shutil.copytree(base, copy)  # times kept
    cache = tmp_path / "cache"
    assert cache_path(cache, base) == cache_path(cache, copy)
    assert cache_path(cache, base).parent == cache and cache_path(cache, base).name.startswith("anchors-")
    (copy / "model.safetensors").write_bytes(b"\1" * 64)  # same size, saved again: a new time
    os.utime(copy / "model.safetensors", ns=(1, 1))
    assert cache_path(cache, base) != cache_path(cache, copy)


def test_the_bank_spreads_over_kinds_of_prompt():
    prompts = anchor_prompts()
    ids = [i for i, _p in prompts]
    assert len(prompts) >= 150 and len(set(ids)) == len(ids) and all(p.strip() for _i, p in prompts)
