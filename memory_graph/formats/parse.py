"""Which log format a file is, and the line-oriented parsers (OpenAI chat JSONL, plain transcripts).

`parse_bytes` is the one entry point: raw bytes in, `Parsed` out, or `ParseError` with the reason
and the line or record to blame. Detection looks at the content, never the file name, because
exports arrive renamed ("conversations (3).json") and JSONL often ends in .txt.
"""

from __future__ import annotations

import json
import re
from typing import Any

from dreamd.memory_graph.formats.documents import RECORD_ERRORS, _reason, parse_chatgpt, parse_claude, parse_sharegpt
from dreamd.memory_graph.formats.records import (
    Conversation,
    MalformedRecord,
    Message,
    Parsed,
    ParseError,
    normalize_role,
    text_of,
    to_timestamp,
)

FORMATS = ("openai", "sharegpt", "chatgpt", "claude", "transcript")
TIMESTAMP_KEYS = ("timestamp", "created_at", "create_time", "time")
CONVERSATION_KEYS = ("conversation_id", "conversation", "thread_id", "session_id")

TURN = re.compile(r"^\s*(user|assistant|system|human|tool)\s*:[ \t]?(.*)$", re.IGNORECASE)
SEPARATOR = re.compile(r"^\s*(-{3,}|={3,})\s*$")


def parse_bytes(data: bytes) -> Parsed:
    """Decode (strict UTF-8), detect the format and parse. Raises ParseError for an unusable file."""
    text = decode(data)
    if not text.strip():
        raise ParseError("the file is empty")
    parsed = parse_text(text)
    if not parsed.message_count:
        detail = (f"; skipped {parsed.skipped} malformed records, first: {parsed.skip_reasons[0]}"
                  if parsed.skipped else "")
        raise ParseError(f"no messages found in this {parsed.format} file{detail}",
                         parsed.skip_reasons[0].split(":")[0] if parsed.skip_reasons else None)
    return parsed


def decode(data: bytes) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ParseError(f"not UTF-8: byte 0x{data[exc.start]:02x} at offset {exc.start}", f"line {line}") from None
    return text.removeprefix("\ufeff")  # a byte-order mark that some Windows tools write


def parse_text(text: str) -> Parsed:
    stripped = text.lstrip()
    if stripped[:1] in ("{", "["):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            if stripped[0] == "[":  # a JSON document, broken: there is no line-by-line reading of it
                raise ParseError(f"invalid JSON: {exc.msg}", f"line {exc.lineno}") from None
            return parse_jsonl(text)
        except RecursionError:
            raise ParseError("JSON nested too deeply") from None
        return parse_json_document(value)
    return parse_transcript(text)


def parse_json_document(value: Any) -> Parsed:
    """A whole-file JSON value: an export (a list, or one conversation), or a one-line JSONL file."""
    sample = value[0] if isinstance(value, list) and value else value
    if isinstance(value, list) and not value:
        raise ParseError("the JSON document is an empty list")
    if isinstance(sample, dict):
        if "mapping" in sample:
            return parse_chatgpt(value)
        if "chat_messages" in sample:
            return parse_claude(value)
        if "conversations" in sample:
            return parse_sharegpt(value)
        if "messages" in sample or "role" in sample:
            records = value if isinstance(value, list) else [value]
            return _openai_records([(f"record {i}", r) for i, r in enumerate(records, start=1)])
    raise ParseError(
        "unrecognised JSON structure: expected an OpenAI chat record, ShareGPT, or a ChatGPT or "
        "Claude export", "record 1" if isinstance(value, list) else None,
    )


def parse_jsonl(text: str) -> Parsed:
    """OpenAI chat JSONL: one `{"messages": [...]}` conversation per line, or one message per line."""
    records, bad = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append((f"line {number}", json.loads(line)))
        except (json.JSONDecodeError, RecursionError) as exc:
            bad.append((f"line {number}", getattr(exc, "msg", "nested too deeply")))
    if not records:
        where, reason = bad[0]
        raise ParseError(f"not JSON lines: {reason}", where)
    parsed = _openai_records(records)
    for where, reason in bad:
        parsed.skip(where, f"invalid JSON: {reason}")
    return parsed


def _openai_records(records: list[tuple[str, Any]]) -> Parsed:
    parsed = Parsed("openai", [])
    # Message-per-line records are grouped into conversations by an id field when present,
    # otherwise a run of them is one conversation (the file is one chat log).
    groups: dict[Any, Conversation] = {}
    for where, record in records:
        try:
            if not isinstance(record, dict):
                raise MalformedRecord(f"a JSON {type(record).__name__}, not an object")
            if "messages" in record:
                conversation = _openai_conversation(record, where, parsed)
                if conversation.messages:
                    parsed.conversations.append(conversation)
            elif "role" in record:
                message = _openai_message(record, where)
                key = next((record[k] for k in CONVERSATION_KEYS if isinstance(record.get(k), (str, int))), None)
                if key not in groups:
                    groups[key] = Conversation([], None if key is None else str(key), None, where)
                    parsed.conversations.append(groups[key])
                if message is not None:
                    groups[key].messages.append(message)
            else:
                raise MalformedRecord("neither a conversation (messages) nor a message (role)")
        except RECORD_ERRORS as exc:
            parsed.skip(where, _reason(exc))
    parsed.conversations = [c for c in parsed.conversations if c.messages]
    return parsed


def _openai_conversation(record: dict, where: str, parsed: Parsed) -> Conversation:
    raw = record["messages"]
    if not isinstance(raw, list):
        raise MalformedRecord("messages is not a list")
    messages = []
    for index, item in enumerate(raw, start=1):
        try:
            message = _openai_message(item, f"{where}, message {index}")
            if message is not None:
                messages.append(message)
        except RECORD_ERRORS as exc:
            parsed.skip(f"{where}, message {index}", _reason(exc))
    external = next((record[k] for k in ("id", *CONVERSATION_KEYS) if isinstance(record.get(k), str)), None)
    title = record.get("title") if isinstance(record.get("title"), str) else None
    return Conversation(messages, external, title, where)


def _openai_message(item: Any, where: str) -> Message | None:
    if not isinstance(item, dict):
        raise MalformedRecord(f"a message is a JSON {type(item).__name__}, not an object")
    role = normalize_role(item.get("role"))
    text = text_of(item.get("content"))
    if not text:
        return None  # e.g. an assistant turn that only calls a tool: nothing to remember
    timestamp = next((to_timestamp(item[k]) for k in TIMESTAMP_KEYS if k in item), None)
    return Message(role, text, timestamp, where)


def parse_transcript(text: str) -> Parsed:
    """Plain text: turns start with `User:`, `Assistant:` or `System:` (also `Human:`, `Tool:`);
    following lines continue the turn; a line of `---` or `===` starts a new conversation."""
    parsed = Parsed("transcript", [])
    conversations: list[list[tuple[str, list[str], int]]] = [[]]
    preamble_line = None
    for number, line in enumerate(text.splitlines(), start=1):
        match = TURN.match(line)
        if match:
            conversations[-1].append((match.group(1), [match.group(2)], number))
        elif SEPARATOR.match(line):
            conversations.append([])
        elif conversations[-1]:
            conversations[-1][-1][1].append(line)
        elif line.strip() and preamble_line is None:
            preamble_line = number
    if not any(conversations):
        raise ParseError("no `User:` / `Assistant:` / `System:` turns found (not JSON either)", "line 1")
    if preamble_line is not None:
        parsed.skip(f"line {preamble_line}", "text outside any turn")
    for index, turns in enumerate(conversations, start=1):
        messages = [
            Message(normalize_role(role), "\n".join(lines).strip(), None, f"line {number}")
            for role, lines, number in turns
            if "\n".join(lines).strip()
        ]
        if messages:
            parsed.conversations.append(Conversation(messages, None, None, f"conversation {index}"))
    return parsed
