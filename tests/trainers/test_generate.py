"""Greedy batches drop their ended rows: the replies must be those of transformers' `generate`."""

import pytest

from dreamd.trainers.generate import generate_chats, greedy_rows
from dreamd.trainers.model_store import LoadedModel
from tests.helpers.tiny import tiny_llama, tiny_tokenizer

NEVER = ("<never written>",)  # a stop string that never appears: generate_chats takes `generate`'s path


def until(row: list[int], done: set[int]) -> list[int]:
    ended = next((i for i, token in enumerate(row) if token in done), None)
    return row if ended is None else row[: ended + 1]


def test_rows_that_end_leave_the_batch_and_the_others_continue_as_generate_would():
    tokenizer = tiny_tokenizer()
    model = tiny_llama().eval()
    prompts = ["hello there", "a", "what is it about?", "zz", "the longest prompt of all of these, by far"]
    tokenizer.padding_side = "left"
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    reference = model.generate(**batch, max_new_tokens=12, do_sample=False,
                               pad_token_id=tokenizer.pad_token_id)[:, batch["input_ids"].shape[1]:].tolist()
    # An end token some rows write early and others not at all, so rows leave at different steps.
    firsts = [next((t for t in row[1:6] if t not in row[:1]), row[0]) for row in reference]
    end = max(set(firsts), key=lambda t: (sum(t in row for row in reference) < len(reference), firsts.count(t)))
    assert 0 < sum(end in row[:11] for row in reference) < len(reference)
    ours = greedy_rows(model, batch["input_ids"], batch["attention_mask"], 12, {end})
    assert ours == [until(row, {end}) for row in reference]
    assert any(len(row) < 12 for row in ours) and any(len(row) == 12 for row in ours)


def test_a_deadline_ends_every_row_early():
    tokenizer = tiny_tokenizer()
    batch = tokenizer(["abc", "de"], return_tensors="pt", padding=True, add_special_tokens=False)
    rows = greedy_rows(tiny_llama().eval(), batch["input_ids"], batch["attention_mask"], 50, set(), deadline=0.0)
    assert [len(row) for row in rows] == [1, 1]


@pytest.mark.real_model
def test_the_default_models_greedy_replies_are_generates(default_model_dir, models_dir):
    from dreamd.trainers.gate.metrics import load_probes
    from dreamd.trainers.model_store import load_model
    from dreamd.trainers.settings import ModelSettings

    loaded: LoadedModel = load_model(ModelSettings(device="cpu"), models_dir)
    chats = [[{"role": "user", "content": p.prompt}] for p in load_probes()[::23]]  # 10 of the bank's kinds
    ours = generate_chats(loaded, chats, 32, 16)
    theirs = generate_chats(loaded, chats, 32, 16, stop_strings=NEVER)
    assert [(g.text, g.tokens, g.finish) for g in ours] == [(g.text, g.tokens, g.finish) for g in theirs]
    assert {g.finish for g in ours} == {"stop", "length"}  # some rows ended early, some ran to the cap
