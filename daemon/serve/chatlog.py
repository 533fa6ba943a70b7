"""Finished conversations, written back into the inbox as OpenAI chat JSONL, in batches.

One file per `log_batch_conversations` conversations or per `log_batch_seconds`, whichever comes
first, so ten thousand chats are a few hundred files, not ten thousand. A batch is written to
`<state>/serve/outbox/` and handed to the inbox's own writer (`Inbox.drop`: tmp/, fsync, rename
into new/), then removed; a crash between the two leaves the file to be dropped again at the next
start, and the ingester skips a file whose sha256 it has seen.

A conversation continued over several requests arrives whole each time. Each record carries an
`id` derived from the conversation's first exchange (its messages up to and including the first
assistant reply), which every later request repeats, so the ingester keys all of them to one
conversation and its per-message hashes (conversation, position, role, text) store each message
once: only the new exchange of each request becomes a memory. Two conversations that open with the
very same exchange count as one (a branch of it).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path

import structlog

from dreamd.memory_graph.inbox import Inbox
from dreamd.memory_graph.settings import InboxSettings

log = structlog.get_logger("dreamd.serve")


def conversation_id(messages: list[dict]) -> str:
    """Stable over a conversation's continuations: a hash of its first exchange."""
    first_reply = next((i for i, m in enumerate(messages) if m["role"] == "assistant"), len(messages) - 1)
    opening = [[m["role"], m["content"]] for m in messages[: first_reply + 1]]
    digest = hashlib.sha256(json.dumps(opening, ensure_ascii=False).encode("utf-8")).hexdigest()
    return f"dreamd-serve-{digest[:32]}"


def record(messages: list[dict], reply: str, checkpoint: str, created: float | None = None) -> dict:
    """The JSONL record of one finished request: its messages and the reply, in OpenAI's shape."""
    whole = [*messages, {"role": "assistant", "content": reply}]
    return {"id": conversation_id(whole), "messages": whole, "checkpoint": checkpoint,
            "created": created if created is not None else time.time()}


class ChatLog:
    def __init__(self, state_root: Path, inbox_dir: Path, inbox_settings: InboxSettings, batch_conversations: int,
                 batch_seconds: float):
        self.outbox = state_root / "serve" / "outbox"
        self.outbox.mkdir(mode=0o750, parents=True, exist_ok=True)
        self.inbox = Inbox(inbox_dir, inbox_settings)
        self.batch_conversations, self.batch_seconds = batch_conversations, batch_seconds
        self.logged = 0  # conversations handed to the inbox since start
        self.files = 0
        self._pending: list[dict] = []
        self._oldest: float | None = None
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()  # one writer at a time; adding never waits for a write
        self.wanted = threading.Event()  # set when a batch is full: the housekeeper writes it now
        self._sequence = 0
        self.drop_leftovers()

    def add(self, entry: dict) -> None:
        with self._lock:
            self._pending.append(entry)
            self._oldest = self._oldest or time.monotonic()
            if len(self._pending) >= self.batch_conversations:
                self.wanted.set()

    def due(self) -> bool:
        with self._lock:
            return bool(self._pending) and (
                len(self._pending) >= self.batch_conversations
                or time.monotonic() - (self._oldest or 0) >= self.batch_seconds)

    def flush(self) -> int:
        """Write what is pending (in files of at most `batch_conversations`); returns how many."""
        with self._flush_lock:
            with self._lock:
                pending, self._pending, self._oldest = self._pending, [], None
                self.wanted.clear()
            written = 0
            try:
                for start in range(0, len(pending), self.batch_conversations):
                    self._write(pending[start:start + self.batch_conversations])
                    written = start + self.batch_conversations
            except OSError:  # a full disk: what was not written waits for the next try
                with self._lock:
                    self._pending[:0] = pending[written:]
                    self._oldest = self._oldest or time.monotonic()
                raise
            return len(pending)

    def _write(self, entries: list[dict]) -> None:
        self._sequence += 1
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        name = f"served-{stamp}-{os.getpid()}-{self._sequence:06d}.jsonl"
        staged, partial = self.outbox / name, self.outbox / f".{name}.tmp"
        with open(partial, "w", encoding="utf-8") as handle:
            for entry in entries:
                handle.write(json.dumps(entry, ensure_ascii=False) + "\n")
        os.rename(partial, staged)  # only whole batches count as leftovers after a crash
        dropped = self.inbox.drop(staged)
        staged.unlink()
        self.logged += len(entries)
        self.files += 1
        log.info("serve.conversations_logged", file=dropped.name, conversations=len(entries))

    def drop_leftovers(self) -> None:
        """Batches a crash left in the outbox go into the inbox now (a repeat is a duplicate there)."""
        for leftover in sorted(self.outbox.glob("served-*.jsonl")):
            self.inbox.drop(leftover)
            leftover.unlink()
            log.info("serve.leftover_logged", file=leftover.name)
