"""What every log format is parsed into: conversations of role-tagged messages.

Parsers are pure functions from decoded text to `Parsed`. A file that cannot be read at all
raises `ParseError` (the inbox quarantines it with the reason and where); a single malformed
record inside a readable file is skipped and counted in `Parsed.skipped`, never silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

ROLES = ("system", "user", "assistant", "tool")

# Every spelling seen in the formats we read; anything else is a malformed message.
ROLE_ALIASES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "model": "assistant",
    "bot": "assistant",
    "ai": "assistant",
    "tool": "tool",
    "function": "tool",
    "ipython": "tool",
    "observation": "tool",
}


class ParseError(ValueError):
    """The file as a whole cannot be used. `where` is a line or record when one is to blame."""

    def __init__(self, reason: str, where: str | None = None):
        self.reason = reason
        self.where = where
        super().__init__(f"{reason} ({where})" if where else reason)


class MalformedRecord(ValueError):
    """One record (a line, a conversation, a message) is unusable; the rest of the file is fine."""


@dataclass(frozen=True)
class Message:
    role: str
    text: str
    timestamp: float | None = None  # Unix seconds (UTC) when the log has one
    position: str = ""  # where in the source file: "line 3", "record 2, node 9f1c"


@dataclass
class Conversation:
    messages: list[Message]
    external_id: str | None = None  # the export's own id, when it has one
    title: str | None = None
    position: str = ""


@dataclass
class Parsed:
    format: str
    conversations: list[Conversation]
    skipped: int = 0
    skip_reasons: list[str] = field(default_factory=list)  # the first few, for the log and the sources row

    def skip(self, where: str, reason: Any) -> None:
        self.skipped += 1
        if len(self.skip_reasons) < 10:
            self.skip_reasons.append(f"{where}: {reason}")

    @property
    def message_count(self) -> int:
        return sum(len(c.messages) for c in self.conversations)


def normalize_role(value: Any) -> str:
    if not isinstance(value, str) or value.strip().lower() not in ROLE_ALIASES:
        raise MalformedRecord(f"unknown role {value!r}")
    return ROLE_ALIASES[value.strip().lower()]


def to_timestamp(value: Any) -> float | None:
    """Unix seconds from a number (seconds or milliseconds) or an ISO 8601 string; None if absent."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        seconds = float(value)
        if seconds != seconds or abs(seconds) > 1e14:  # NaN, or nonsense beyond any millisecond clock
            return None
        return seconds / 1000.0 if seconds > 1e11 else seconds  # milliseconds since the epoch
    if isinstance(value, str) and value.strip():
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.timestamp()
    return None


def text_of(content: Any) -> str:
    """The text of a message's content: a string, or a list of strings / {"type": "text"} blocks."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content.strip()
    if isinstance(content, list):
        pieces = []
        for part in content:
            if isinstance(part, str):
                pieces.append(part)
            elif isinstance(part, dict) and part.get("type", "text") in ("text", "input_text", "output_text"):
                value = part.get("text")
                if isinstance(value, str):
                    pieces.append(value)
        return "\n".join(p.strip() for p in pieces if p.strip())
    raise MalformedRecord(f"content is a {type(content).__name__}, not text")
