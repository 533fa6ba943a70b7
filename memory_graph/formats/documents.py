"""Parsers for the JSON document formats: ShareGPT, the ChatGPT export and the Claude export.

Each takes the already-decoded JSON value and returns `Parsed`. A conversation or message that is
not shaped as its format says is skipped and counted; scaffolding the format itself marks as such
(hidden system prompts, empty parts, tool-call plumbing) is left out without counting as an error.
"""

from __future__ import annotations

from typing import Any

from dreamd.memory_graph.formats.records import (
    Conversation,
    MalformedRecord,
    Message,
    Parsed,
    normalize_role,
    text_of,
    to_timestamp,
)

# A conversation record that raises one of these is malformed, whatever the cause inside.
RECORD_ERRORS = (MalformedRecord, TypeError, ValueError, AttributeError, KeyError, IndexError, RecursionError)


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def _optional_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def parse_sharegpt(value: Any) -> Parsed:
    """`{"conversations": [{"from": "human"|"gpt"|"system", "value": ...}]}`, or a list of those."""
    parsed = Parsed("sharegpt", [])
    for index, record in enumerate(_as_list(value), start=1):
        where = f"record {index}"
        try:
            turns = record["conversations"]
            if not isinstance(turns, list):
                raise MalformedRecord("conversations is not a list")
            messages = []
            for turn_index, turn in enumerate(turns, start=1):
                try:
                    text = text_of(turn["value"])
                    if text:
                        messages.append(Message(normalize_role(turn["from"]), text, None,
                                                f"{where}, turn {turn_index}"))
                except RECORD_ERRORS as exc:
                    parsed.skip(f"{where}, turn {turn_index}", _reason(exc))
            if messages:
                parsed.conversations.append(
                    Conversation(messages, _optional_str(record.get("id")), None, where)
                )
        except RECORD_ERRORS as exc:
            parsed.skip(where, _reason(exc))
    return parsed


def parse_chatgpt(value: Any) -> Parsed:
    """The ChatGPT data export: follow each conversation's branch from the root to `current_node`."""
    parsed = Parsed("chatgpt", [])
    for index, record in enumerate(_as_list(value), start=1):
        where = f"record {index}"
        try:
            mapping = record["mapping"]
            if not isinstance(mapping, dict):
                raise MalformedRecord("mapping is not an object")
            messages = []
            for node_id in _branch(mapping, record.get("current_node")):
                message = mapping[node_id].get("message") if isinstance(mapping[node_id], dict) else None
                try:
                    kept = _chatgpt_message(message, f"{where}, node {node_id}")
                except RECORD_ERRORS as exc:
                    parsed.skip(f"{where}, node {node_id}", _reason(exc))
                    continue
                if kept is not None:
                    messages.append(kept)
            if messages:
                conversation_id = _optional_str(record.get("conversation_id")) or _optional_str(record.get("id"))
                title = _optional_str(record.get("title"))
                parsed.conversations.append(Conversation(messages, conversation_id, title, where))
        except RECORD_ERRORS as exc:
            parsed.skip(where, _reason(exc))
    return parsed


def _branch(mapping: dict, current: Any) -> list[str]:
    """Node ids from the root to `current_node`: the branch the user last saw; edits and
    regenerations on other branches are left out."""
    if not isinstance(current, str) or current not in mapping:
        raise MalformedRecord(f"current_node {current!r} is not in mapping")
    path, seen, node = [], set(), current
    while node is not None:
        if node in seen or node not in mapping:
            raise MalformedRecord(f"the parent chain from current_node breaks at {node!r}")
        seen.add(node)
        path.append(node)
        entry = mapping[node]
        node = entry.get("parent") if isinstance(entry, dict) else None
    return path[::-1]


def _chatgpt_message(message: Any, where: str) -> Message | None:
    if message is None:  # the root and other structural nodes carry no message
        return None
    metadata = message.get("metadata") or {}
    if isinstance(metadata, dict) and metadata.get("is_visually_hidden_from_conversation"):
        return None
    recipient = message.get("recipient")
    if isinstance(recipient, str) and recipient != "all":
        return None  # the assistant calling a tool: plumbing, not conversation
    role = normalize_role((message.get("author") or {}).get("role"))
    content = message.get("content") or {}
    if not isinstance(content, dict):
        raise MalformedRecord("content is not an object")
    text = text_of(content.get("parts"))
    if not text and isinstance(content.get("text"), str):
        text = content["text"].strip()  # code and execution_output carry `text`, not `parts`
    if not text:
        return None
    return Message(role, text, to_timestamp(message.get("create_time")), where)


def parse_claude(value: Any) -> Parsed:
    """The Claude data export: conversations with `chat_messages` (`sender`, `text` or `content`)."""
    parsed = Parsed("claude", [])
    for index, record in enumerate(_as_list(value), start=1):
        where = f"record {index}"
        try:
            chat = record["chat_messages"]
            if not isinstance(chat, list):
                raise MalformedRecord("chat_messages is not a list")
            messages = []
            for turn_index, turn in enumerate(chat, start=1):
                try:
                    # `content` blocks are the newer, fuller form; `text` the older flat one.
                    text = text_of(turn.get("content")) if turn.get("content") else ""
                    text = text or text_of(turn.get("text"))
                    if text:
                        messages.append(Message(normalize_role(turn["sender"]), text,
                                                to_timestamp(turn.get("created_at")), f"{where}, message {turn_index}"))
                except RECORD_ERRORS as exc:
                    parsed.skip(f"{where}, message {turn_index}", _reason(exc))
            if messages:
                parsed.conversations.append(
                    Conversation(messages, _optional_str(record.get("uuid")), _optional_str(record.get("name")), where)
                )
        except RECORD_ERRORS as exc:
            parsed.skip(where, _reason(exc))
    return parsed


def _reason(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return f"missing field {exc.args[0]!r}"
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return str(exc) or type(exc).__name__
