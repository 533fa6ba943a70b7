"""Greedy batches go through dreamd's decoder (rows that end leave the batch, the shared system
prompt runs once; tests/trainers/test_decoder.py): the replies must be those of transformers' `generate`."""

import pytest

from dreamd.trainers.decoder import end_token_ids
from dreamd.trainers.generate import generate_chats
from dreamd.trainers.model_store import LoadedModel
from tests.helpers.train import tiny_loaded


def test_a_deadline_ends_every_row_as_timed_out():
    loaded = tiny_loaded()
    replies = generate_chats(loaded, [[{"role": "user", "content": q}] for q in ("abc", "de")], 50,
                             max_seconds=0.0)
    assert [g.finish for g in replies] == ["timeout", "timeout"] and all(g.tokens < 50 for g in replies)


def transformers_replies(loaded: LoadedModel, chats: list[list[dict]], max_new_tokens: int,
                         stop_strings: tuple[str, ...] = ()) -> list[tuple[str, int]]:
    """(text, tokens) of each reply by transformers' own greedy `generate`, one left-padded batch."""
    tokenizer = loaded.tokenizer
    done = end_token_ids(loaded)
    prompts = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in chats]
    tokenizer.padding_side = "left"
    inputs = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    extra = {"stop_strings": list(stop_strings), "tokenizer": tokenizer} if stop_strings else {}
    output = loaded.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                   pad_token_id=tokenizer.pad_token_id, **extra)
    out = []
    for row in output[:, inputs["input_ids"].shape[1]:].tolist():
        kept = row[: next((i for i, t in enumerate(row) if t in done), len(row))]
        text = tokenizer.decode(kept, skip_special_tokens=True)
        cut = min((text.find(s) for s in stop_strings if s in text), default=len(text))
        out.append((text[:cut].strip(), len(kept)))
    return out


@pytest.mark.real_model
@pytest.mark.parametrize("stops", [(), ("\n", " is ")], ids=["no-stops", "stop-strings"])
def test_the_default_models_greedy_replies_are_generates(default_model_dir, models_dir, stops):
    from dreamd.trainers.gate.metrics import load_probes
    from dreamd.trainers.model_store import load_model
    from dreamd.trainers.settings import ModelSettings

    loaded: LoadedModel = load_model(ModelSettings(device="cpu"), models_dir)
    chats = [[{"role": "user", "content": p.prompt}] for p in load_probes()[::23]]  # 10 of the bank's kinds
    ours = generate_chats(loaded, chats, 32, 16, stop_strings=stops)
    assert [(g.text, g.tokens) for g in ours] == transformers_replies(loaded, chats, 32, stops)
    # Some rows ended early and, without stop strings, some ran to the cap.
    assert {g.finish for g in ours} == ({"stop"} if stops else {"stop", "length"})
