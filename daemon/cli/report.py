"""`dreamctl report`: charts and one HTML page of the loop's history, from the database alone.

Imported by `dreamctl` at start, so nothing heavy at module level: matplotlib is imported only
when the command runs (in daemon/report/report.py).
"""

from __future__ import annotations

from pathlib import Path

import click

from dreamd.daemon.cli.common import EXIT_FAILURE, echo_json, emit, json_option


class ReportError(click.ClickException):
    exit_code = EXIT_FAILURE


@click.command("report")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for index.html and the PNG charts (default: <state>/reports).")
@json_option
@click.pass_obj
def report(obj, out_dir: Path | None, as_json: bool):
    """Write PNG charts and an HTML page linking them: evaluations per checkpoint over time
    (held-out loss, probes, KL to base, fingerprint, acquisition), training loss per step and per
    round, dreams accepted and rejected per cycle with the reject reasons, memory graph growth,
    and promotions, rejections and rollbacks on a timeline.

    Reads only the database (read-only, one snapshot), so it works whether dreamd runs or not.

    Exit codes: 0 success; 1 failure (no database yet, or it cannot be read); 2 invalid usage or
    configuration.
    """
    import sqlite3

    from dreamd.daemon.report.report import NoDatabase, build_report

    obj.config()  # validates the config and sends logs to stderr, away from --json output
    layout = obj.layout()
    try:
        result = build_report(layout, out_dir)
    except NoDatabase as exc:
        raise ReportError(str(exc)) from None
    except sqlite3.Error as exc:
        raise ReportError(f"cannot read {layout.database}: {exc}") from None
    except OSError as exc:  # e.g. <state>/reports belongs to the daemon's user: pass --out
        raise ReportError(f"cannot write the report: {exc}") from None
    if as_json:
        echo_json(result)
        return
    click.echo(f"report written: {result['page']}")
    click.echo(f"charts ({len(result['images'])}): {', '.join(result['images']) or 'none yet'}")
    emit({name.replace("_", " "): value for name, value in result["counts"].items()}, as_json=False)
