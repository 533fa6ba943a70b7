"""What dreamd and dreamctl share: reading the config with the right exit code, output, and
asking the model a question from its weights alone (`dreamctl ask` and `dreamctl demo`)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

from dreamd.daemon.config import Config, ConfigError, load_config

if TYPE_CHECKING:  # no torch at import time: `dreamctl status` stays fast
    from dreamd.daemon.service.state_dir import StateLayout
    from dreamd.trainers.model_store import LoadedModel

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


def model_to_ask(config: Config, layout: StateLayout, checkpoint: str | None = None) -> tuple[str, LoadedModel]:
    """The model to ask, as (checkpoint id, loaded model): the checkpoint `current` names (`base`
    until a candidate is promoted), the one that learned, unless `checkpoint` names another (`base`
    or an id, verified first). Raises ModelLoadError or CheckpointError."""
    from dreamd.trainers.checkpoints.pointers import read_pointer
    from dreamd.trainers.checkpoints.weights import load_as

    checkpoint = checkpoint or read_pointer(layout, "current")
    return checkpoint, load_as(config.model, layout.models, layout, checkpoint)


def answer_alone(loaded: LoadedModel, question: str, max_new_tokens: int = 64) -> str:
    """The greedy answer from the weights alone: `question` as the one user turn, no memory and no
    system prompt in the context (the model's own chat template)."""
    from dreamd.trainers.generate import chat_reply

    return chat_reply(loaded, [{"role": "user", "content": question}], max_new_tokens=max_new_tokens)
