"""`dreamctl checkpoints` and `dreamctl rollback`: the lineage and its pointers. Listing reads the
state directory; rollback goes through the running daemon, or acts on the state directory under the
instance lock when it is down. No torch is imported: listing, verifying and moving pointers need
only files."""

from __future__ import annotations

import os
import time

import click

from dreamd.daemon.cli.common import emit, json_option
from dreamd.daemon.cli.service import EXIT_DENIED, CommandFailed, ask_daemon
from dreamd.daemon.service.control import DaemonUnavailable, user_label
from dreamd.daemon.service.instance_lock import AlreadyRunning


@click.command("checkpoints")
@json_option
@click.pass_obj
def checkpoints_cmd(obj, as_json: bool):
    """List every checkpoint, oldest first: parent, step, mode, examples, pointers, and whether it verifies."""
    from dreamd.trainers.checkpoints.pointers import POINTERS, lineage, read_pointer

    obj.config()  # validates the config and sends logs to stderr, away from --json output
    layout = obj.layout()
    rows = lineage(layout)
    pointers = {name: read_pointer(layout, name) for name in POINTERS}
    if as_json:
        emit({"state_dir": str(layout.root), **pointers, "checkpoints": rows}, as_json=True)
        return
    click.echo(f"current    {pointers['current']}\nlast_good  {pointers['last_good']}")
    for row in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(row["created_at"])) if "created_at" in row else "?"
        marks = ",".join(row["pointers"])
        status = "ok" if row["verified"] else "BAD: " + row.get("error", "")
        click.echo(
            f"{row['id']}  parent={row['parent'] or 'base'}  step={row.get('step', '?')}  "
            f"mode={row.get('mode', '?')}  examples={row.get('examples', '?')}  {when}  {marks}  {status}".rstrip()
        )


@click.command("rollback")
@click.argument("checkpoint_id", required=False)
@click.option("--to-base", is_flag=True, help="Point current at the base model (no training at all).")
@json_option
@click.pass_obj
def rollback_cmd(obj, checkpoint_id: str | None, to_base: bool, as_json: bool):
    """Point `current` back at last_good, at CHECKPOINT_ID, or (--to-base) at the base model.

    Only a checkpoint that verifies is accepted; running it twice changes nothing the second time.
    A running dreamd does it (abandoning a dream cycle that runs, so no promotion can overtake
    the rollback; it needs root, the daemon's user or the control group); when dreamd is down,
    dreamctl does it itself under the daemon's instance lock.
    """
    # Here, not at the top: dreamctl imports this module at start, and its other commands need none of it.
    from dreamd.daemon.gate.history import roll_back_offline
    from dreamd.trainers.checkpoints.manifest import CheckpointError
    from dreamd.trainers.checkpoints.pointers import BASE

    if to_base and checkpoint_id:
        raise click.UsageError("give a CHECKPOINT_ID or --to-base, not both")
    obj.config()
    layout = obj.layout()
    args = {"to_base": True} if to_base else {"checkpoint": checkpoint_id} if checkpoint_id else {}
    try:
        # Abandoning a running cycle takes up to its child's SIGTERM grace: wait longer than that.
        result = {**ask_daemon(layout, "rollback", args, timeout=30.0), "via": "daemon"}
    except DaemonUnavailable:
        if not layout.root.is_dir():
            raise click.ClickException(f"no state dir at {layout.root}") from None
        try:
            by = f"dreamctl {user_label(os.getuid())}"
            result = roll_back_offline(layout, BASE if to_base else checkpoint_id, by)
        except (CheckpointError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None
        except AlreadyRunning as exc:
            raise CommandFailed(f"dreamd runs (pid {exc.pid}) but its control socket does not answer") from None
        except PermissionError as exc:
            raise CommandFailed(f"cannot change the state dir: {exc}", EXIT_DENIED) from None
        result["via"] = "state dir (dreamd is not running)"
    emit(result, as_json)
