"""`dreamd serve`: the OpenAI-compatible server for the model `current` names (see daemon/serve/)."""

from __future__ import annotations

import logging
import os

import click
import structlog

from dreamd.daemon.cli.common import EXIT_FAILURE, ConfigProblem, config_option, read_config, state_dir_option
from dreamd.daemon.config import ConfigError
from dreamd.daemon.service.logs import configure_logging
from dreamd.daemon.service.state_dir import StateLayout, resolve_state_dir


@click.command("serve")
@config_option
@state_dir_option
@click.option("--host", default=None, help="Address to listen on (default: serve.host, 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="TCP port (default: serve.port, 8077; 0: any free port, see <state>/serve/status.json).")
@click.pass_context
def serve_cmd(ctx, config_path: str | None, state_dir: str | None, host: str | None, port: int | None) -> None:
    """Serve the model `current` names over an OpenAI-compatible HTTP API (POST /v1/chat/completions,
    GET /v1/models, GET /health), following promotions and rollbacks as they happen, and write
    the conversations back into the inbox (batched; `"store": false` requests never).

    Models: `dreamd` (always the current checkpoint) and `base`. Runs until SIGTERM or SIGINT,
    letting streams in flight finish. Exit codes: 0 clean stop, 1 failure, 2 invalid configuration.
    """
    parent = ctx.obj or {}
    config = read_config(config_path or parent.get("config_path"))
    configure_logging("json", config.logging.level)
    from dreamd.daemon.serve.server import run
    from dreamd.trainers.model_store import ModelLoadError

    layout = StateLayout(resolve_state_dir(state_dir or parent.get("state_dir")))
    try:
        code = run(config, layout, host, port)
    except (ConfigError, ModelLoadError) as exc:
        raise ConfigProblem(exc) from None
    except OSError as exc:  # the address is taken, or not ours to bind
        structlog.get_logger("dreamd.serve").error("serve failed", error=str(exc))
        code = EXIT_FAILURE
    if code != 0:
        logging.shutdown()
        os._exit(code)
