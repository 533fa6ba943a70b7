"""Reading requests (pure), the [serve] settings, and the chat log's batching into a real inbox."""

from __future__ import annotations

import json
import time

import pytest

from dreamd.daemon.config import ConfigError, config_from_dict
from dreamd.daemon.serve.chatlog import ChatLog, conversation_id, record
from dreamd.daemon.serve.protocol import ApiError, parse_chat_request
from dreamd.daemon.service.state_dir import StateLayout
from dreamd.memory_graph.settings import InboxSettings

MODELS = ("dreamd", "base")
USER = [{"role": "user", "content": "hi"}]


def parse(**body):
    return parse_chat_request({"model": "dreamd", "messages": USER, **body}, MODELS, 100)


def test_a_request_is_read_as_openai_means_it():
    chat = parse(max_completion_tokens=7, max_tokens=99, stop="END", seed=-1, stream=True,
                 stream_options={"include_usage": True}, store=False, user="someone", metadata={"a": "b"},
                 messages=[{"role": "developer", "content": [{"type": "text", "text": "be "}, {"type": "text",
                           "text": "brief"}]}, *USER])
    assert chat.max_tokens == 7  # newer clients send only max_completion_tokens; it wins
    assert chat.stop == ("END",) and chat.stream and chat.include_usage and not chat.store
    assert chat.messages[0] == {"role": "system", "content": "be brief"} and chat.seed >= 0
    assert parse().temperature == 1.0 and parse(top_p=0).temperature == 0.0


@pytest.mark.parametrize("body, status, param", [
    ({"model": "gpt-4o"}, 404, "model"),
    ({"n": 3}, 400, "n"),
    ({"max_tokens": 101}, 400, "max_tokens"),
    ({"max_completion_tokens": 0}, 400, "max_completion_tokens"),
    ({"temperature": 3}, 400, "temperature"),
    ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ({"messages": []}, 400, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, 400, "messages[0].role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400, "messages[0].content"),
    ({"tools": [{"type": "function"}]}, 400, "tools"),
])
def test_unusable_fields_are_refused_by_name(body, status, param):
    with pytest.raises(ApiError) as caught:
        parse(**body)
    assert caught.value.status == status and caught.value.body()["error"]["param"] == param


def test_serve_settings_are_checked_by_key():
    assert config_from_dict({"serve": {"port": 9000}}).serve.port == 9000
    with pytest.raises(ConfigError) as caught:
        config_from_dict({"serve": {"port": 70000}})
    assert caught.value.key == "serve.port"
    with pytest.raises(ConfigError) as caught:
        config_from_dict({"serve": {"default_max_tokens": 5000}})
    assert caught.value.key == "serve.default_max_tokens"


def test_a_continued_conversation_keeps_its_id():
    opening = record(USER, "hello!", "base")
    later = record([*USER, {"role": "assistant", "content": "hello!"}, {"role": "user", "content": "more"}],
                   "sure", "base")
    other = record(USER, "a different first reply", "base")
    assert opening["id"] == later["id"] == conversation_id(later["messages"]) != other["id"]


def test_the_chat_log_writes_a_file_per_batch_or_per_interval(tmp_path):
    layout = StateLayout(tmp_path / "state").ensure()
    chatlog = ChatLog(layout.root, layout.inbox, InboxSettings(), batch_conversations=2, batch_seconds=0.2)
    chatlog.add(record(USER, "one", "base"))
    assert not chatlog.due() and not chatlog.wanted.is_set()
    chatlog.add(record(USER, "two", "base"))
    assert chatlog.due() and chatlog.wanted.is_set() and chatlog.flush() == 2
    chatlog.add(record(USER, "three", "base"))
    time.sleep(0.25)
    assert chatlog.due() and chatlog.flush() == 1
    files = sorted(layout.inbox_folder("new").iterdir())
    assert [len(path.read_text().splitlines()) for path in files] == [2, 1]
    assert json.loads(files[1].read_text())["messages"][-1] == {"role": "assistant", "content": "three"}
    assert not any(chatlog.outbox.iterdir()) and not any(layout.inbox_folder("tmp").iterdir())
    # A batch a crash left in the outbox is handed over at the next start.
    (chatlog.outbox / "served-left.jsonl").write_text(json.dumps(record(USER, "four", "base")) + "\n")
    ChatLog(layout.root, layout.inbox, InboxSettings(), 2, 0.2)
    assert (layout.inbox_folder("new") / "served-left.jsonl").exists()
