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



def test_neighbour_prompts_are_answered_by_the_base_once_then_read_back(tmp_path, models_dir, default_model_dir):
    from dreamd.trainers.anchors import NeighbourCache
    from dreamd.trainers.examples import encode_example
    from dreamd.trainers.model_store import load_model
    from dreamd.trainers.settings import ModelSettings

    loaded = load_model(ModelSettings(device="cpu"), models_dir)  # the real default base
    loads = []

    def load_base():
        loads.append(1)
        return loaded

    cache = NeighbourCache(default_model_dir, tmp_path / "cache", load_base)
    first = [("n1", "How many legs does the dog have?"), ("n2", "What does a cat eat?")]
    answered = cache.answers(first)
    assert loads == [1] and [(a.id, a.prompt) for a in answered] == first and all(a.answer for a in answered)
    assert "four" in answered[0].answer.lower() or "4" in answered[0].answer  # the base's own answer
    for anchor in answered:  # the base's distribution at every answer token, as the anchors carry
        encoded = encode_example(loaded.tokenizer, anchor.example("neighbour"), 512)
        assert encoded.id == f"neighbour:{anchor.id}" and len(anchor.top_ids) == len(encoded.response_ids)
    assert cache.answers(list(reversed(first))) == list(reversed(answered)) and loads == [1]  # cached
    again = NeighbourCache(default_model_dir, tmp_path / "cache", load_base)  # a new process reads the file
    assert again.answers(first) == answered and loads == [1]
    assert again.answers([*first, ("n3", "Where does a horse live?")])[:2] == answered and loads == [1, 1]
    assert set(NeighbourCache(default_model_dir, tmp_path / "cache", load_base).known()) == {"n1", "n2", "n3"}


def test_the_neighbour_cache_keeps_the_newest_and_remembers_empty_answers(tmp_path, monkeypatch):
    """The logic around the base model (a stand-in answers): what is kept, what is asked again."""
    from dreamd.trainers import anchors

    base = tmp_path / "base"
    base.mkdir()
    (base / "model.safetensors").write_bytes(b"\0" * 64)
    asked: list[list[str]] = []

    def answered_by(_loaded, prompts, _tokens):
        asked.append([i for i, _p in prompts])
        return [anchors.Anchor(i, p, "" if i == "silent" else f"answer {i}") for i, p in prompts]

    monkeypatch.setattr(anchors, "answered_by", answered_by)
    monkeypatch.setattr(anchors, "NEIGHBOURS_KEPT", 3)
    cache = anchors.NeighbourCache(base, tmp_path / "cache", lambda: None)
    got = cache.answers([("n1", "one?"), ("silent", "nothing?"), ("n2", "two?")])
    assert [a.id for a in got] == ["n1", "n2"] and asked == [["n1", "silent", "n2"]]
    assert cache.answers([("silent", "nothing?")]) == [] and len(asked) == 1  # not asked again
    cache.answers([("n3", "three?"), ("n4", "four?")])
    kept = anchors.NeighbourCache(base, tmp_path / "cache", lambda: None).known()
    assert list(kept) == ["n2", "n3", "n4"]  # the newest three, from the file
