"""`dreamd`: the long-running service (run by systemd as `dreamd`)."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import TYPE_CHECKING

import click
import structlog

from dreamd.daemon.cli.common import EXIT_FAILURE, config_option, emit, read_config, state_dir_option
from dreamd.daemon.service.logs import configure_logging
from dreamd.daemon.service.state_dir import StateLayout, resolve_state_dir

if TYPE_CHECKING:
    from dreamd.daemon.loop import Stages

EXIT_ALREADY_RUNNING = 3


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@config_option
@state_dir_option
@click.option("--check-config", is_flag=True, help="Validate the config, print it resolved, and exit.")
@click.option("--stages", "stages_spec", default=None, hidden=True,
              help="module:factory returning the Stages to run (tests and experiments).")
@click.pass_context
def main(ctx: click.Context, config_path: str | None, state_dir: str | None, check_config: bool,
         stages_spec: str | None) -> None:
    """The dreamd service: ingests conversation logs from the inbox into a memory graph, dreams
    over it, trains on the dreams worth keeping, and promotes a new checkpoint only when it passes
    the quality gate.

    Runs until SIGTERM or SIGINT; SIGHUP re-reads the config. Talks to systemd through
    $NOTIFY_SOCKET when set (Type=notify, watchdog) and to dreamctl through its control socket.

    Logs are JSON lines on stderr (journald keeps them as they are) and in
    <state>/logs/dreamd.log. Exit codes: 0 clean stop, 1 failure (or a step that could not be
    stopped in time), 2 invalid configuration, 3 another dreamd already runs on this state dir.

    `dreamd serve` runs the OpenAI-compatible server instead (a second process beside this one).
    """
    if ctx.invoked_subcommand is not None:  # `dreamd serve`: its own process, options passed on
        ctx.obj = {"config_path": config_path, "state_dir": state_dir}
        return
    config = read_config(config_path)
    configure_logging("json", config.logging.level)
    if check_config:
        emit({"config_file": str(config.source or "(defaults)"), "state_dir": str(resolve_state_dir(state_dir)),
              **config.to_dict()}, as_json=True)
        return
    # Here, not at the top: `--check-config` (and `--help`) answer without the service's imports.
    from dreamd.daemon.service.instance_lock import AlreadyRunning
    from dreamd.daemon.service.runtime import Service

    log = structlog.get_logger("dreamd")
    try:
        service = Service(config, StateLayout(resolve_state_dir(state_dir)), load_stages(stages_spec), config_path)
        code = service.run()
    except AlreadyRunning as exc:
        log.error("already running", error=str(exc), pid=exc.pid)
        sys.exit(EXIT_ALREADY_RUNNING)
    except Exception:
        log.exception("dreamd failed")
        code = EXIT_FAILURE
    if code != 0:
        # A job that would not stop (or the scheduler of a failed start) may still run in a worker
        # thread; a normal exit would wait for it forever (and systemd would SIGKILL us at
        # TimeoutStopSec). Children are gone and files are written by rename, so leave now.
        logging.shutdown()
        os._exit(code)


def load_stages(spec: str | None) -> Stages:
    """The default stages, or those a `module:factory` (`--stages`) returns: tests and experiments
    run the real daemon on scripted fakes that way."""
    from dreamd.daemon.loop import Stages, default_stages

    if not spec:
        return default_stages()
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ValueError(f"--stages expects module:factory, got {spec!r}")
    stages = getattr(importlib.import_module(module), name)()
    if not isinstance(stages, Stages):
        raise TypeError(f"{spec} returned {type(stages).__name__}, not Stages")
    return stages


from dreamd.daemon.cli.serve import serve_cmd  # noqa: E402  (added to `main`, defined above)

main.add_command(serve_cmd)

if __name__ == "__main__":  # `python -m dreamd.daemon.cli.dreamd`, where no `dreamd` script is installed
    main()
