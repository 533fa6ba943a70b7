"""Logging is configured here and nowhere else.

The daemon writes one JSON object per line to stderr, which journald keeps as it is; the CLI
writes readable, aligned lines. Libraries' stdlib logging goes through the same renderer, and
the noisiest of them (progress bars, hub warnings) are quietened to warnings.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
import warnings
from pathlib import Path

NOISY_LIBRARIES = ("transformers", "sentence_transformers", "huggingface_hub", "urllib3", "filelock")


def configure_logging(mode: str = "console", level: str = "info") -> None:
    """mode: 'json' for the daemon (journald-friendly), 'console' for the CLI."""
    # Imported here, not above: `dreamctl status` imports this module but logs nothing, and
    # structlog (it brings rich) would be most of its start-up time.
    import structlog

    numeric = getattr(logging, level.upper())
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if mode == "json":
        renderer = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.format_exc_info)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    for name in NOISY_LIBRARIES:
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))
    # transformers' generate() asks peft models a deprecated question on every call; not ours to fix.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        cache_logger_on_first_use=False,
    )


def also_log_to_file(path: Path, rotate: bool = True) -> None:
    """Copy the configured log lines (configure_logging first) into the file at `path`. Only the
    daemon rotates it; its children append (rotate=False), so one process does the renames.
    Raises OSError when the file cannot be opened."""
    if rotate:
        handler = logging.handlers.RotatingFileHandler(path, maxBytes=5 << 20, backupCount=3, encoding="utf-8")
    else:
        handler = logging.FileHandler(path, encoding="utf-8")
    root = logging.getLogger()
    handler.setFormatter(root.handlers[0].formatter if root.handlers else None)
    root.addHandler(handler)
