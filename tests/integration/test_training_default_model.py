"""Training on the real default model: its BPE tokenizer's boundaries, the frozen loss against
completion-only loss, and one LoRA round whose checkpoint loads with PEFT as it is."""

import pytest
import torch

from dreamd.trainers.checkpoints.weights import load_as
from dreamd.trainers.context_frozen import completion_only_loss, frozen_losses
from dreamd.trainers.examples import TrainingExample, encode_example, encode_examples
from dreamd.trainers.model_store import load_model
from dreamd.trainers.round import train_round
from dreamd.trainers.settings import ModelSettings, TrainingSettings
from tests.helpers.train import state

pytestmark = pytest.mark.real_model

FACT = [
    {"role": "user", "content": "Where do the team's release notes live?"},
    {"role": "assistant", "content": "They live in the Lighthouse wiki, under Releases."},
]


@pytest.fixture(scope="module")
def loaded(models_dir):
    return load_model(ModelSettings(device="cpu"), models_dir)


def test_boundary_tokens_match_the_whole_conversation(loaded):
    tokenizer = loaded.tokenizer
    # A template whose prompt ends in a space: BPE makes " Paris" one token across the boundary,
    # so tokenizing the halves separately gives different tokens from the whole conversation.
    tokenizer_copy = type(tokenizer).from_pretrained(loaded.directory)
    tokenizer_copy.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}Q: {{ m['content'] }}\n"
        "{% else %}A: {{ m['content'] }}\n{% endif %}{% endfor %}{% if add_generation_prompt %}A: {% endif %}"
    )
    messages = [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris"}]
    full = tokenizer_copy(tokenizer_copy.apply_chat_template(messages, tokenize=False),
                          add_special_tokens=False)["input_ids"]
    prompt = tokenizer_copy.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    naive = tokenizer_copy(prompt, add_special_tokens=False)["input_ids"] + tokenizer_copy(
        "Paris\n", add_special_tokens=False)["input_ids"]
    assert naive != full  # the hazard is real with this tokenizer
    encoded = encode_example(tokenizer_copy, TrainingExample("paris", messages), 1000)
    assert encoded.context_ids + encoded.response_ids == full
    assert "Paris" in tokenizer_copy.decode(encoded.response_ids)

    encoded = encode_example(tokenizer, TrainingExample("fact", FACT), 1000)  # the model's own ChatML
    whole = tokenizer(tokenizer.apply_chat_template(FACT, tokenize=False), add_special_tokens=False)["input_ids"]
    assert encoded.context_ids + encoded.response_ids == whole
    assert tokenizer.decode(encoded.response_ids).startswith(FACT[-1]["content"])


def test_frozen_loss_equals_completion_only_loss(loaded):
    history = [{"role": "user", "content": "We deploy every Tuesday at 14:00 UTC from the release branch. " * 12},
               {"role": "assistant", "content": "Noted: Tuesdays, 14:00 UTC, release branch."}]
    examples = encode_examples(loaded.tokenizer, [TrainingExample("long", history + FACT),
                                                  TrainingExample("short", FACT)], 2048)
    with torch.no_grad():
        frozen = frozen_losses(loaded.model, examples, loaded.tokenizer.pad_token_id)
        baseline = torch.stack([completion_only_loss(loaded.model, e) for e in examples])
    assert torch.allclose(frozen, baseline, atol=1e-4), (frozen, baseline)


def test_a_lora_round_lowers_the_loss_and_its_checkpoint_loads(models_dir, tmp_path):
    layout = state(tmp_path)
    settings = TrainingSettings(mode="lora", lora_learning_rate=1e-3, batch_size=2, epochs=3)
    examples = [TrainingExample(f"fact{i}", FACT) for i in range(4)]
    def fresh():
        return load_model(ModelSettings(device="cpu"), models_dir)

    base = fresh()
    encoded = encode_examples(base.tokenizer, examples[:1], 2048)
    with torch.no_grad():
        before = frozen_losses(base.model, encoded, base.tokenizer.pad_token_id)[0]
    checkpoint = train_round(fresh(), examples, settings, layout)
    trained = load_as(ModelSettings(device="cpu"), models_dir, layout, checkpoint)  # verified, then loaded
    with torch.no_grad():
        after = frozen_losses(trained.model, encoded, base.tokenizer.pad_token_id)[0]
    assert after < 0.8 * before, (before, after)
