"""`dreamd serve` on the real default model (SmolLM2-135M-Instruct), through the real openai client."""

from __future__ import annotations

import pytest

from tests.helpers.serve_process import ServeProcess

pytestmark = pytest.mark.real_model
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_the_default_model_answers_plainly_and_streamed(tmp_path, default_model_dir):
    server = ServeProcess(tmp_path, default_model_dir, "log_conversations = false\n", threads=None).start()
    try:
        client = server.client()
        plain = client.chat.completions.create(model="dreamd", messages=QUESTION, temperature=0, max_tokens=24)
        answer = plain.choices[0].message.content
        assert "Paris" in answer and plain.system_fingerprint == "base"
        chunks = list(client.chat.completions.create(model="dreamd", messages=QUESTION, temperature=0, max_tokens=24,
                                                     stream=True, stream_options={"include_usage": True}))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer
        assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
        short = client.chat.completions.create(model="base", messages=QUESTION, temperature=0,
                                               max_completion_tokens=3)
        assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 3
        assert answer.startswith(short.choices[0].message.content)
    finally:
        assert server.stop() == 0
