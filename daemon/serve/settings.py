"""Settings of the OpenAI-compatible server (`dreamd serve`)."""

from __future__ import annotations

from dataclasses import dataclass

from dreamd.trainers.settings import require, setting


@dataclass
class ServeSettings:
    """The OpenAI-compatible server that answers with the current model (dreamd serve)."""

    host: str = setting("127.0.0.1", "Address to listen on; the default takes connections from this machine only.")
    port: int = setting(8077, "TCP port to listen on (0: any free port, written to <state>/serve/status.json).")
    api_key_file: str = setting(
        "", "A file holding the bearer token clients must send (Authorization: Bearer ...). Empty: no token asked."
    )
    log_conversations: bool = setting(
        True, "Write each finished conversation into the inbox, so the model learns from it (unless store=false)."
    )
    log_batch_conversations: int = setting(64, "Conversations gathered into one inbox file at most.")
    log_batch_seconds: float = setting(30.0, "A conversation waits at most this long before its inbox file is written.")
    max_queue: int = setting(
        64, "Requests waiting or being answered at once; one more is refused with 429 (never an unbounded queue)."
    )
    max_batch: int = setting(8, "Requests answered together in one batch by the generation worker.")
    batch_wait_ms: float = setting(
        30.0, "How long the worker waits after a request arrives for others to batch with it, in milliseconds."
    )
    max_tokens: int = setting(2048, "Largest max_tokens a request may ask for; more is refused with 400.")
    default_max_tokens: int = setting(512, "Reply length in tokens when a request names none.")
    max_context_tokens: int = setting(
        0, "Prompt plus reply, in tokens, at most; 0: the model's own limit (max_position_embeddings)."
    )
    max_body_bytes: int = setting(1 << 20, "Largest request body in bytes; more is refused with 413.")
    poll_seconds: float = setting(2.0, "How often the `current` pointer is looked at for a promotion or rollback.")

    def __post_init__(self) -> None:
        require(bool(self.host.strip()), "host", "an address such as 127.0.0.1 or ::1", self.host)
        require(0 <= self.port <= 65535, "port", "a port from 0 to 65535", self.port)
        require(1 <= self.log_batch_conversations <= 100_000, "log_batch_conversations",
                "an integer from 1 to 100000", self.log_batch_conversations)
        require(self.log_batch_seconds > 0, "log_batch_seconds", "a positive number of seconds", self.log_batch_seconds)
        require(1 <= self.max_queue <= 100_000, "max_queue", "an integer from 1 to 100000", self.max_queue)
        require(1 <= self.max_batch <= 256, "max_batch", "an integer from 1 to 256", self.max_batch)
        require(0 <= self.batch_wait_ms <= 10_000, "batch_wait_ms", "0 to 10000 milliseconds", self.batch_wait_ms)
        require(self.max_tokens >= 1, "max_tokens", "at least 1", self.max_tokens)
        require(1 <= self.default_max_tokens <= self.max_tokens, "default_max_tokens",
                f"from 1 to max_tokens ({self.max_tokens})", self.default_max_tokens)
        require(self.max_context_tokens >= 0, "max_context_tokens", "zero or more tokens", self.max_context_tokens)
        require(self.max_body_bytes >= 1024, "max_body_bytes", "at least 1024 bytes", self.max_body_bytes)
        require(self.poll_seconds > 0, "poll_seconds", "a positive number of seconds", self.poll_seconds)
