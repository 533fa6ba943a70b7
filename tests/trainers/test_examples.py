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
