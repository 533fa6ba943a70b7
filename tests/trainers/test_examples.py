"""Training examples: context + response tokens are the whole conversation's tokens."""

import pytest

from dreamd.trainers.examples import TrainingExample, encode_example
from tests.helpers.tiny import tiny_tokenizer
from tests.helpers.train import chats


def whole(tokenizer, messages):
    return tokenizer(tokenizer.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"]


def test_halves_concatenate_to_the_whole_tokenization():
    tokenizer = tiny_tokenizer()
    for example in chats(5):
        encoded = encode_example(tokenizer, example, max_context_tokens=10_000)
        assert encoded.context_ids + encoded.response_ids == whole(tokenizer, example.messages)
        assert encoded.truncated == 0
        response_text = tokenizer.decode(encoded.response_ids)
        assert response_text.startswith(example.messages[-1]["content"])
        assert tokenizer.decode(encoded.context_ids).endswith("<|im_start|>assistant\n")


def test_context_loses_its_oldest_tokens_response_stays_whole():
    tokenizer = tiny_tokenizer()
    example = chats(3)[2]
    full = encode_example(tokenizer, example, max_context_tokens=10_000)
    cut = encode_example(tokenizer, example, max_context_tokens=20)
    assert len(cut.context_ids) == 20
    assert cut.context_ids == full.context_ids[-20:]
    assert cut.response_ids == full.response_ids
    assert cut.truncated == len(full.context_ids) - 20


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "assistant", "content": "hi"}],
        [{"role": "user", "content": "hi"}, {"role": "user", "content": "again"}],
    ],
)
def test_an_example_must_end_with_a_response_after_a_context(messages):
    with pytest.raises(ValueError):
        encode_example(tiny_tokenizer(), TrainingExample("x", messages), 100)


def test_batches_of_like_length_hold_every_example_once_with_less_padding():
    import random

    import torch

    from dreamd.trainers.examples import EncodedExample
    from dreamd.trainers.round import like_length_batches

    rng = random.Random(0)  # a round's mix: short neighbour answers, long dreams, long replays
    examples = [EncodedExample(f"e{n}", [1] * rng.randint(10, 300), [2] * rng.choice([rng.randint(5, 48), 128]))
                for n in range(83)]

    def padded(batches):
        return sum(len(b) * max(len(e.response_ids) for e in b) for b in batches)

    first = like_length_batches(examples, 4, torch.Generator().manual_seed(0))
    again = like_length_batches(examples, 4, torch.Generator().manual_seed(0))
    other = like_length_batches(examples, 4, torch.Generator().manual_seed(1))
    assert sorted(e.id for b in first for e in b) == sorted(e.id for e in examples)  # each once
    assert all(1 <= len(b) <= 4 for b in first) and sum(len(b) < 4 for b in first) <= 3
    assert [[e.id for e in b] for b in first] == [[e.id for e in b] for b in again]  # seeded
    assert [[e.id for e in b] for b in first] != [[e.id for e in b] for b in other]
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(0)).tolist()
    drawn = [[examples[i] for i in order[s:s + 4]] for s in range(0, len(order), 4)]
    assert padded(first) < 0.8 * padded(drawn)
