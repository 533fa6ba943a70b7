"""The small vocabulary every component's settings dataclass is written in.

Each component (inbox, graph, model, training, ...) owns one dataclass of settings in its own
folder, with help text beside every field. This module gives them a way to declare a field with
help (`setting`) and to reject a bad value naming its key (`ConfigError`, `require`). The TOML
loader in `config.py` prefixes the section, so a user reads `model.device: ...`.
"""

from __future__ import annotations

import dataclasses
from typing import Any


class ConfigError(ValueError):
    """A configuration value that cannot be used. `key` is the dotted config key."""

    def __init__(self, key: str, message: str):
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}")

    def within(self, section: str) -> "ConfigError":
        """The same error with the section prefixed to the key (`device` -> `model.device`)."""
        return ConfigError(f"{section}.{self.key}", self.message)


def setting(default: Any, help: str, **field_kwargs: Any) -> Any:
    """A dataclass field with its help text; lists get a fresh copy per instance."""
    metadata = {"help": help}
    if isinstance(default, (list, dict)):
        return dataclasses.field(
            default_factory=lambda: type(default)(default), metadata=metadata, **field_kwargs
        )
    return dataclasses.field(default=default, metadata=metadata, **field_kwargs)


def require(condition: bool, key: str, allowed: str, value: Any) -> None:
    """Raise a ConfigError naming `key`, what is allowed and what was given."""
    if not condition:
        raise ConfigError(key, f"must be {allowed} (got {value!r})")


def help_of(field: dataclasses.Field) -> str:
    return field.metadata.get("help", "")
