"""`dreamctl checkpoints` and `dreamctl rollback`: the lineage and its pointers, straight from the
state directory. No torch is imported: listing, verifying and moving pointers need only files."""

from __future__ import annotations

import time

import click

from dreamd.daemon.cli_common import emit, json_option


@click.command("checkpoints")
@json_option
@click.pass_obj
def checkpoints_cmd(obj, as_json: bool):
    """List every checkpoint, oldest first: parent, step, mode, examples, pointers, and whether it verifies."""
    from dreamd.trainers.lineage import POINTERS, lineage, read_pointer

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
    """
    from dreamd.trainers.checkpoints import CheckpointError
    from dreamd.trainers.lineage import BASE, rollback

    if to_base and checkpoint_id:
        raise click.UsageError("give a CHECKPOINT_ID or --to-base, not both")
    obj.config()
    layout = obj.layout()
    target = BASE if to_base else checkpoint_id
    try:
        result = rollback(layout, target)
    except (CheckpointError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    emit(result, as_json)
