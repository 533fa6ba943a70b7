"""dreamd's batched, row-by-row decoder on the tiny model: rows end on their own, a seeded row
repeats whatever it is batched with, stop strings are cut even across tokens, and its greedy
replies are what transformers' `generate` gives."""

from __future__ import annotations

from dreamd.trainers.decoder import Row, decode_batch
from dreamd.trainers.generate import generate_chats
from tests.helpers.train import tiny_loaded

NO_SPECIAL = {0: -100.0, 1: -100.0, 2: -100.0}


def prompt(loaded, text: str) -> list[int]:
    tokenizer = loaded.tokenizer
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                             tokenize=False)
    return tokenizer(rendered, add_special_tokens=False)["input_ids"]


def sampled(loaded, text: str, seed: int, max_tokens: int, **extra) -> Row:
    return Row(prompt(loaded, text), max_tokens, temperature=1.0, seed=seed, logit_bias=NO_SPECIAL, **extra)


def test_rows_of_a_batch_end_on_their_own_and_match_themselves_alone():
    loaded = tiny_loaded()
    batch = [sampled(loaded, "a short one", 1, 5), sampled(loaded, "a much longer question " * 4, 2, 30),
             sampled(loaded, "x", 3, 17)]
    deltas: list[list[str]] = [[] for _ in batch]
    for row, sink in zip(batch, deltas):
        row.on_delta = sink.append
    decode_batch(loaded, batch)
    assert [len(r.tokens) for r in batch] == [5, 30, 17] and {r.finish for r in batch} == {"length"}
    for row, sink in zip(batch, deltas):
        assert "".join(sink) == row.text  # streamed pieces add up to the reply
        alone = sampled(loaded, "", 0, row.max_tokens)
        alone.prompt_ids, alone.seed = row.prompt_ids, row.seed
        decode_batch(loaded, [alone])
        assert alone.text == row.text  # the finished rows left the batch without disturbing the others


def test_a_stop_string_is_cut_even_when_it_spans_tokens():
    loaded = tiny_loaded()
    whole = sampled(loaded, "hello", 5, 40)
    decode_batch(loaded, [whole])
    stop = whole.text[20:24]  # four one-character tokens
    sent: list[str] = []
    cut = sampled(loaded, "hello", 5, 40, stop=(stop, "never appears"))
    cut.on_delta = sent.append
    decode_batch(loaded, [cut])
    assert cut.finish == "stop" and cut.text == whole.text[: whole.text.find(stop)]
    assert stop not in "".join(sent) and "".join(sent) == cut.text


def test_greedy_rows_that_end_leave_the_batch_and_the_others_continue_as_generate_would():
    loaded = tiny_loaded()
    tokenizer, model = loaded.tokenizer, loaded.model
    prompts = ["hello there", "a", "what is it about?", "zz", "the longest prompt of all of these, by far"]
    tokenizer.padding_side = "left"
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    reference = model.generate(**batch, max_new_tokens=12, do_sample=False,
                               pad_token_id=tokenizer.pad_token_id)[:, batch["input_ids"].shape[1]:].tolist()
    # An end token some rows write early and others not at all, so rows leave at different steps.
    firsts = [next((t for t in row[1:6] if t not in row[:1]), row[0]) for row in reference]
    end = max(set(firsts), key=lambda t: (sum(t in row for row in reference) < len(reference), firsts.count(t)))
    assert 0 < sum(end in row[:11] for row in reference) < len(reference)
    model.generation_config.eos_token_id = end  # one of the tokens that end a reply (end_token_ids)
    rows = [Row(tokenizer(p, add_special_tokens=False)["input_ids"], 12) for p in prompts]
    decode_batch(loaded, rows)
    expected = [row[: row.index(end)] if end in row else row for row in reference]
    assert [r.tokens for r in rows] == expected
    assert [r.finish for r in rows] == ["stop" if end in row else "length" for row in reference]
    assert {r.finish for r in rows} == {"stop", "length"}


def test_greedy_replies_match_transformers_generate():
    loaded = tiny_loaded(seed=3)
    chats = ["hi", "what is the zorb?", "tell me more about it, please"]
    # A stop string that never appears sends generate_chats through transformers' `generate`.
    expected = generate_chats(loaded, [[{"role": "user", "content": c}] for c in chats], max_new_tokens=12,
                              stop_strings=("<never written>",))
    rows = [Row(prompt(loaded, c), 12) for c in chats]
    decode_batch(loaded, rows)
    for row, generation in zip(rows, expected):
        assert row.text.strip() == generation.text and len(row.tokens) == generation.tokens


def test_a_rows_own_end_tokens_end_it_like_the_models():
    loaded = tiny_loaded()
    free = Row(prompt(loaded, "hi"), 6)
    decode_batch(loaded, [free])
    ended = Row(prompt(loaded, "hi"), 6, end_tokens=frozenset({free.tokens[2]}))
    decode_batch(loaded, [ended])
    assert free.finish == "length" and ended.finish == "stop"
    assert ended.tokens == free.tokens[: free.tokens.index(free.tokens[2])]


def test_a_cancelled_row_stops_at_the_next_step():
    loaded = tiny_loaded()
    steps = []
    row = sampled(loaded, "hi", 1, 100, cancelled=lambda: len(steps) >= 3)
    row.on_delta = steps.append
    decode_batch(loaded, [row])
    assert row.finish == "cancelled" and len(row.tokens) == 3


def test_rows_that_join_a_running_batch_get_the_reply_they_would_get_alone():
    loaded = tiny_loaded()
    first = sampled(loaded, "the first question, a long one", 1, 25)
    late = [sampled(loaded, "late", 2, 10), sampled(loaded, "later still, and longer", 3, 30)]
    steps: list[str] = []
    first.on_delta = steps.append
    ended: list[str] = []
    late[0].on_finish = ended.append

    def admit(room: int) -> list:
        if len(steps) in (3, 6) and late and room:  # one joins after the 3rd token, one after the 6th
            return [late.pop(0)]
        return []

    joiners = list(late)
    decode_batch(loaded, [first], admit=admit, max_rows=4)
    assert not late and ended == ["length"]
    for row in [first, *joiners]:
        alone = sampled(loaded, "", row.seed, row.max_tokens)
        alone.prompt_ids = row.prompt_ids
        decode_batch(loaded, [alone])
        assert row.text == alone.text and len(row.tokens) == row.max_tokens


def test_a_shared_system_prompt_is_run_once_and_changes_no_reply():
    loaded = tiny_loaded()
    tokenizer = loaded.tokenizer
    system = {"role": "system", "content": "You remember the team's facts and answer briefly."}

    def row(question: str, seed: int) -> Row:
        rendered = tokenizer.apply_chat_template([system, {"role": "user", "content": question}],
                                                 add_generation_prompt=True, tokenize=False)
        return Row(tokenizer(rendered, add_special_tokens=False)["input_ids"], 12, temperature=1.0, seed=seed,
                   logit_bias=NO_SPECIAL)

    forwards = []
    hook = loaded.model.register_forward_hook(lambda _m, args, kwargs, _out: forwards.append(kwargs["input_ids"].shape),
                                              with_kwargs=True)
    batch = [row("where?", 1), row("and when was it, exactly?", 2), row("who", 3)]
    decode_batch(loaded, batch)
    hook.remove()
    assert forwards[0][0] == 1 and forwards[0][1] > 40  # the system prompt, once
    assert forwards[1][0] == 3 and forwards[1][1] < 40  # then only what differs, for the three rows
    for done in batch:
        alone = row("", done.seed)
        alone.prompt_ids = done.prompt_ids
        decode_batch(loaded, [alone])
        assert alone.text == done.text
