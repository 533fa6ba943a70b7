"""Asking the model for a reply to a chat, with its own chat template."""

from __future__ import annotations

import torch

from dreamd.trainers.model_store import LoadedModel


@torch.inference_mode()
def chat_reply(loaded: LoadedModel, messages: list[dict], max_new_tokens: int = 64) -> str:
    """The model's greedy reply to `messages` ([{"role": ..., "content": ...}, ...])."""
    tokenizer, model = loaded.tokenizer, loaded.model
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    ).to(model.device)
    output = model.generate(
        **inputs,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
    )
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
