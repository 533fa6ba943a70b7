"""`dreamd`: the long-running service (run by systemd as `dreamd`)."""

from __future__ import annotations

import sys

import click

from dreamd.daemon.cli_common import config_option, emit, read_config, state_dir_option
from dreamd.daemon.logs import configure_logging
from dreamd.daemon.state_dir import resolve_state_dir


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@config_option
@state_dir_option
@click.option("--check-config", is_flag=True, help="Validate the config, print it resolved, and exit.")
def main(config_path: str | None, state_dir: str | None, check_config: bool) -> None:
    """The dreamd service: ingests conversation logs from the inbox into a memory graph, dreams
    over it, trains on the dreams worth keeping, and promotes a new checkpoint only when it passes
    the quality gate.

    Logs are JSON lines on stderr (journald keeps them as they are). Exit codes: 0 clean stop,
    1 failure, 2 invalid configuration.
    """
    config = read_config(config_path)
    configure_logging("json", config.logging.level)
    if check_config:
        emit({"config_file": str(config.source or "(defaults)"), "state_dir": str(resolve_state_dir(state_dir)),
              **config.to_dict()}, as_json=True)
        return
    click.echo("dreamd: the service loop is not built yet; use `dreamctl demo` for the pipeline so far.", err=True)
    sys.exit(1)
