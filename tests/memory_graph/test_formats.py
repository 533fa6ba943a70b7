"""Format detection and parsing, on the bundled samples (written for the project) and edge cases."""

import json
from pathlib import Path

import pytest

from dreamd.memory_graph.formats.parse import parse_bytes
from dreamd.memory_graph.formats.records import ParseError

SAMPLES = Path(__file__).resolve().parents[2] / "memory_graph" / "samples"


def parse_sample(name):
    return parse_bytes((SAMPLES / name).read_bytes())


def test_openai_conversation_per_line():
    parsed = parse_sample("team_chats.jsonl")
    assert parsed.format == "openai" and parsed.skipped == 0
    assert len(parsed.conversations) == 6
    first = parsed.conversations[0].messages
    assert [m.role for m in first] == ["user", "assistant"]
    assert first[0].text.startswith("Our deploys go out") and first[0].position == "line 1, message 1"


def test_openai_message_per_line_grouped_by_conversation_with_timestamps():
    parsed = parse_sample("release_notes_chat.jsonl")
    (conversation,) = parsed.conversations
    assert conversation.external_id == "rel-2024-11"
    assert [m.role for m in conversation.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert conversation.messages[3].text == "Make it shorter, one line per change."  # content blocks
    assert conversation.messages[1].timestamp == pytest.approx(1710856570.0)  # 2024-03-19T13:56:10Z


def test_sharegpt():
    parsed = parse_sample("sharegpt_cooking.json")
    assert parsed.format == "sharegpt"
    assert [len(c.messages) for c in parsed.conversations] == [5, 2]
    assert [m.role for m in parsed.conversations[0].messages][:3] == ["system", "user", "assistant"]
    assert parsed.conversations[0].external_id == "cook-0001"


def test_chatgpt_export_follows_the_branch_to_current_node():
    parsed = parse_sample("chatgpt_conversations.json")
    assert parsed.format == "chatgpt" and parsed.skipped == 0
    pool, sourdough = parsed.conversations
    texts = [m.text for m in pool.messages]
    # n2 (the abandoned first answer) is on another branch; n0 is a hidden, empty system node.
    assert [m.position.split("node ")[1] for m in pool.messages] == ["n1", "n3", "n4", "n5"]
    assert not any(t.startswith("12 pods x 20 = 240 connections, which") for t in texts)
    assert texts[2] == "If we add PgBouncer, what pool size per pod then?"  # the empty part dropped
    assert pool.title == "Postgres connection pool sizing" and pool.messages[0].timestamp == 1710232801.0
    assert [m.role for m in sourdough.messages] == ["user", "assistant"]


def test_claude_export_text_and_content_blocks():
    parsed = parse_sample("claude_conversations.json")
    assert parsed.format == "claude"
    alerting, tomatoes = parsed.conversations
    assert alerting.messages[1].text.startswith("Alert on the age of the oldest message")
    assert "dashboard panel" in alerting.messages[1].text  # both content blocks, `text` was empty
    assert [m.role for m in tomatoes.messages] == ["user", "assistant"]
    assert tomatoes.messages[0].timestamp == pytest.approx(1712079600.0)


def test_plain_transcript_with_continuations_and_separator():
    parsed = parse_sample("support_thread.txt")
    assert parsed.format == "transcript"
    vpn, printer = parsed.conversations
    assert [m.role for m in vpn.messages] == ["system"] + ["user", "assistant"] * 3
    assert "restart the client afterwards" in vpn.messages[2].text.lower()  # a continuation line
    assert len(printer.messages) == 2
    assert parsed.skipped == 1 and parsed.skip_reasons[0].startswith("line 1:")  # the header line


def test_malformed_records_inside_a_valid_file_are_skipped_and_counted():
    lines = [
        json.dumps({"messages": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}]}),
        "{not json",
        json.dumps({"messages": [{"role": "wizard", "content": "?"}, {"role": "user", "content": "still here"}]}),
        json.dumps([1, 2]),
    ]
    parsed = parse_bytes("\n".join(lines).encode())
    assert parsed.message_count == 3
    assert parsed.skipped == 3
    assert any(r.startswith("line 2:") for r in parsed.skip_reasons)
    assert any("unknown role 'wizard'" in r for r in parsed.skip_reasons)


@pytest.mark.parametrize(
    "data, reason, where",
    [
        (b"", "empty", None),
        (b"  \n\t\n", "empty", None),
        (b"User: caf\xe9\n", "not UTF-8", "line 1"),
        (b"[1, 2", "invalid JSON", "line 1"),
        (b'{"hello": "world"}', "unrecognised JSON structure", None),
        (b"just some notes\nwith no speakers", "no `User:`", "line 1"),
        (b'{"messages": [{"role": "robot", "content": "x"}]}', "no messages", "record 1, message 1"),
        (b"{oops\n{also bad", "not JSON lines", "line 1"),
    ],
)
def test_unusable_files_raise_with_reason_and_place(data, reason, where):
    with pytest.raises(ParseError) as caught:
        parse_bytes(data)
    assert reason in caught.value.reason
    assert caught.value.where == where


def test_chatgpt_broken_parent_chain_is_a_skipped_record_not_a_crash():
    good = json.loads((SAMPLES / "chatgpt_conversations.json").read_text())[1]
    broken = {"title": "x", "current_node": "a",
              "mapping": {"a": {"parent": "b", "message": None}, "b": {"parent": "a"}}}
    parsed = parse_bytes(json.dumps([broken, good]).encode())
    assert parsed.skipped == 1 and "parent chain" in parsed.skip_reasons[0]
    assert len(parsed.conversations) == 1
