"""What dreamd and dreamctl share: reading the config with the right exit code, and output."""

from __future__ import annotations

import json
from typing import Any

import click

from dreamd.daemon.config import Config, ConfigError, load_config

EXIT_FAILURE = 1
EXIT_CONFIG = 2  # also click's exit code for a usage error


class ConfigProblem(click.ClickException):
    """A bad config value or an unusable model/embedder path: exit code 2, the key named."""

    exit_code = EXIT_CONFIG

    def __init__(self, error: ValueError):  # a ConfigError, ModelLoadError or EmbedderLoadError: `key: message`
        super().__init__(f"config error: {error}")


def read_config(path: str | None) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        raise ConfigProblem(exc) from None


config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Config file (default: $DREAMD_CONFIG, else ./dreamd.toml, else /etc/dreamd/dreamd.toml).",
)
state_dir_option = click.option(
    "--state-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="State directory (default: $DREAMD_STATE_DIR, else $STATE_DIRECTORY, else ./state).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")


def json_text(value: Any) -> str:
    """The one JSON encoding of what the CLI prints: anything JSON has no type for (a path, a
    datetime) as its str(), so a new field of an odd type never crashes a --json command."""
    return json.dumps(value, default=str)


def echo_json(data: Any) -> None:
    """A --json output: one JSON document on one line of stdout (logs and progress go to stderr)."""
    click.echo(json_text(data))


def emit(data: dict[str, Any], as_json: bool) -> None:
    """Print `data` as JSON, or as aligned `key  value` lines for people."""
    if as_json:
        echo_json(data)
        return
    width = max((len(k) for k in data), default=0)
    for key, value in data.items():
        click.echo(f"{key.ljust(width)}  {_human(value)}")


def _human(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, (dict, list)):
        return json_text(value)
    return str(value)
