"""One TOML file configures every component; this module finds, reads and validates it.

The file has one table per component (`[model]`, `[embedder]`, ...), each mapped onto that
component's settings dataclass. Every key has a default, so an empty or missing file is valid.
Values are checked twice: here for their TOML type, then by the dataclass for their range (it
raises a plain ValueError `<key>: ...`, made a ConfigError here); either way the error names the
full key (`model.device`) and what is allowed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dreamd.daemon.dreaming.settings import DreamSettings, SignalSettings
from dreamd.daemon.serve.settings import ServeSettings
from dreamd.daemon.service.settings import DaemonSettings, LoggingSettings
from dreamd.memory_graph.settings import EmbedderSettings, GraphSettings, InboxSettings
from dreamd.trainers.settings import EvalSettings, GateSettings, ModelSettings, TrainingSettings, help_of

CONFIG_ENV = "DREAMD_CONFIG"
SEARCH_PATH = (Path("dreamd.toml"), Path("/etc/dreamd/dreamd.toml"))


class ConfigError(ValueError):
    """A configuration value that cannot be used. `key` is the dotted config key."""

    def __init__(self, key: str, message: str):
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}")

    def within(self, section: str) -> ConfigError:
        """The same error with the section prefixed to the key (`device` -> `model.device`)."""
        return ConfigError(f"{section}.{self.key}" if self.key else section, self.message)


@dataclass
class Config:
    """All settings, one section per component. `source` is the file read, if any."""

    model: ModelSettings = field(default_factory=ModelSettings)
    embedder: EmbedderSettings = field(default_factory=EmbedderSettings)
    inbox: InboxSettings = field(default_factory=InboxSettings)
    graph: GraphSettings = field(default_factory=GraphSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    dreams: DreamSettings = field(default_factory=DreamSettings)
    signal: SignalSettings = field(default_factory=SignalSettings)
    evaluation: EvalSettings = field(default_factory=EvalSettings)
    gate: GateSettings = field(default_factory=GateSettings)
    daemon: DaemonSettings = field(default_factory=DaemonSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    serve: ServeSettings = field(default_factory=ServeSettings)
    source: Path | None = field(default=None, compare=False)

    def sections(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in _section_fields()}

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: dataclasses.asdict(section) for name, section in self.sections().items()}


def _section_fields() -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(Config) if f.name != "source"]


def find_config_file() -> Path | None:
    """$DREAMD_CONFIG (which must exist), else ./dreamd.toml, else /etc/dreamd/dreamd.toml."""
    explicit = os.environ.get(CONFIG_ENV)
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(CONFIG_ENV, f"names {path}, which is not a readable file")
        return path
    return next((p for p in SEARCH_PATH if p.is_file()), None)


def load_config(path: Path | str | None = None) -> Config:
    """Read and validate the config file (found as `find_config_file` says when not given)."""
    path = Path(path) if path is not None else find_config_file()
    if path is None:
        return Config()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("config", f"file {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError("config", f"{path} is not valid TOML: {exc}") from None
    config = config_from_dict(raw)
    config.source = path
    return config


def config_from_dict(raw: dict[str, Any]) -> Config:
    sections = {f.name: f for f in _section_fields()}
    for name, table in raw.items():
        if name not in sections:
            raise ConfigError(name, "is not a config section (known: " + ", ".join(sections) + ")")
        if not isinstance(table, dict):
            raise ConfigError(name, "must be a table, e.g. [" + name + "]")
    built = {}
    for name, section_field in sections.items():
        cls = section_field.default_factory  # the section's dataclass
        try:
            built[name] = _build_section(cls, raw.get(name, {}))
        except ConfigError as exc:
            raise exc.within(name) from None
    return Config(**built)


def _build_section(cls: type, table: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(key, "is not a known key (known: " + ", ".join(sorted(known)) + ")")
        _check_type(key, value, hints[key])
    values = {k: float(v) if hints[k] is float else v for k, v in table.items()}
    try:
        return cls(**values)
    except ValueError as exc:
        raise _named(exc, known) from None


def _named(exc: ValueError, known: set[str]) -> ConfigError:
    """A section's dataclass rejects a value as `<key>: <message>` (a plain ValueError: the
    components know nothing of config files); here it becomes a ConfigError on that key, and the
    caller adds the section. A message naming no field of the section is kept whole, on the section."""
    key, sep, message = str(exc).partition(": ")
    if sep and key in known:
        return ConfigError(key, message)
    return ConfigError("", str(exc))


def _check_type(key: str, value: Any, expected: Any) -> None:
    if expected is float:
        ok, word = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    elif expected is int:
        ok, word = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif expected is bool:
        ok, word = isinstance(value, bool), "true or false"
    elif expected is str:
        ok, word = isinstance(value, str), "a string"
    elif typing.get_origin(expected) is list:
        (item,) = typing.get_args(expected)
        ok = isinstance(value, list) and all(isinstance(v, item) and not isinstance(v, bool) for v in value)
        word = f"a list of {item.__name__}"
    else:  # a type this loader does not know yet: let the dataclass judge it
        return
    if not ok:
        raise ConfigError(key, f"must be {word} (got {value!r})")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value)  # strings and lists of strings/numbers are valid TOML this way


def render_config(raw: dict[str, dict[str, Any]]) -> str:
    """A config as TOML that load_config reads back the same (e.g. Config.to_dict() with a change)."""
    lines = []
    for section, values in raw.items():
        lines += [f"[{section}]"] + [f"{key} = {_toml_value(value)}" for key, value in values.items()] + [""]
    return "\n".join(lines)


def render_example() -> str:
    """The commented example config: every key, its default and its help text."""
    lines = [
        "# dreamd configuration. Every key is optional; the values shown are the defaults.",
        f"# Read from ${CONFIG_ENV}, else ./dreamd.toml, else /etc/dreamd/dreamd.toml.",
    ]
    for section_field in _section_fields():
        cls = section_field.default_factory
        lines += ["", f"[{section_field.name}]"]
        doc = (cls.__doc__ or "").strip()
        if doc and not doc.startswith(cls.__name__ + "("):
            lines.append(f"# {doc}")
        defaults = cls()
        for f in dataclasses.fields(cls):
            for help_line in _wrap(help_of(f)):
                lines.append(f"# {help_line}")
            lines.append(f"{f.name} = {_toml_value(getattr(defaults, f.name))}")
    return "\n".join(lines) + "\n"


def _wrap(text: str, width: int = 96) -> list[str]:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + ([line] if line else [])


def documented_keys() -> list[str]:
    """Every `section.key`, for the README and its test."""
    return [
        f"{s.name}.{f.name}"
        for s in _section_fields()
        for f in dataclasses.fields(s.default_factory)
    ]
