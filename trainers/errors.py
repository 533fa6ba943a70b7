"""The error a model load raises: it names the setting to change, so the caller can report it.

A ValueError, so a caller that only knows "a bad value" catches it; `key` is the dotted setting
(`model.path`, `model.device`) and `message` what is wrong with it. `str()` reads `key: message`,
the shape the daemon prints its own config errors in.
"""

from __future__ import annotations


class ModelLoadError(ValueError):
    """The model named by the settings cannot be found, read or placed; the message says what was tried."""

    def __init__(self, message: str, key: str = "model.path"):
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}")
