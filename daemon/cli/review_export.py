"""`dreamctl review` (the optional human queue for accepted dreams) and `dreamctl export` (a
checkpoint as a directory transformers, peft and vLLM load as they are).

Review writes to the database directly: SQLite's locking makes that safe beside a running daemon,
and only users who may write the database (root, the dreamd user and group) can do it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import click

from dreamd.daemon.cli.common import EXIT_FAILURE, echo_json, emit, json_option


class ExportError(click.ClickException):
    exit_code = EXIT_FAILURE


@click.group("review", invoke_without_command=True)
@json_option
@click.pass_context
def review(ctx, as_json: bool):
    """The human review queue (with `dreams.review = true`): accepted dreams wait here until
    approved (then they may be trained on) or rejected. Without a subcommand, list them."""
    if ctx.invoked_subcommand is not None:
        return
    from dreamd.daemon.dreaming.review import pending

    db = _database(ctx.obj)
    waiting = pending(db)
    if as_json:
        echo_json({"pending": waiting})
        return
    if not waiting:
        click.echo("no dreams waiting for review")
    for dream in waiting:
        click.echo(f"dream {dream['id']}  memories {dream.get('node_ids')}\n"
                   f"  scenario: {dream['scenario']}\n  response: {dream['response']}")


@review.command("approve")
@click.argument("dream_id", type=int)
@click.option("--note", default="", help="Why, for the record.")
@json_option
@click.pass_obj
def approve_cmd(obj, dream_id: int, note: str, as_json: bool):
    """Approve a pending dream: the next training round may use it."""
    _decide(obj, dream_id, "approved", note, as_json)


@review.command("reject")
@click.argument("dream_id", type=int)
@click.option("--note", default="", help="Why, for the record.")
@json_option
@click.pass_obj
def reject_cmd(obj, dream_id: int, note: str, as_json: bool):
    """Reject a pending dream: it is never trained on."""
    _decide(obj, dream_id, "rejected", note, as_json)


def _decide(obj, dream_id: int, decision: str, note: str, as_json: bool) -> None:
    from dreamd.daemon.dreaming.review import ReviewError, decide

    try:
        dream = decide(_database(obj), dream_id, decision, note)
    except ReviewError as exc:
        raise ExportError(str(exc)) from None
    emit({"dream": dream_id, "status": dream["status"], "note": note}, as_json)


def _database(obj):
    from dreamd.memory_graph.database.store import open_store

    obj.config()
    layout = obj.layout()
    if not layout.database.exists():
        raise ExportError(f"no database in {layout.root}: nothing has been ingested yet")
    return open_store(layout.database)


@click.command("export")
@click.option("--to", "target", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="A new directory to write (it must not exist, or be empty).")
@click.option("--checkpoint", "checkpoint_id", default=None, help="Checkpoint id (default: current).")
@click.option("--merged", is_flag=True,
              help="Write a whole Hugging Face model with the adapter merged in, instead of the adapter alone.")
@click.option("--vllm", "for_vllm", is_flag=True,
              help="Refuse an adapter vLLM would reject (rank over --max-lora-rank, modules_to_save, DoRA, "
                   "biases) instead of only warning.")
@click.option("--max-lora-rank", default=16, show_default=True, type=click.IntRange(1),
              help="The --max-lora-rank your vLLM server runs with (vLLM's default is 16).")
@json_option
@click.pass_obj
def export(obj, target: Path, checkpoint_id: str | None, merged: bool, for_vllm: bool, max_lora_rank: int,
           as_json: bool):
    """Export a checkpoint: a LoRA checkpoint as a PEFT adapter directory, a full one (or any with
    --merged) as a Hugging Face model directory, both in safetensors, loadable by transformers,
    peft and vLLM as they are. Verified first; written atomically. An adapter vLLM would reject is
    named with the reason (a warning; an error with --vllm)."""
    from dreamd.trainers.atomic import publish_dir, staging_dir
    from dreamd.trainers.checkpoints.manifest import CheckpointError, checkpoint_dir
    from dreamd.trainers.checkpoints.pointers import BASE, read_pointer, verify_loadable

    config = obj.config()
    layout = obj.layout()
    wanted = checkpoint_id or read_pointer(layout, "current")
    if target.exists() and any(target.iterdir()):
        raise ExportError(f"{target} exists and is not empty; export never overwrites")
    try:
        manifest = verify_loadable(layout, wanted) if wanted != BASE else None
    except CheckpointError as exc:
        raise ExportError(f"checkpoint {wanted} does not verify: {exc}") from None
    if manifest is not None and manifest.mode == "lora" and manifest.base_weights and not merged:
        raise ExportError(f"{wanted} is an adapter on top of full-weight checkpoint {manifest.base_weights}; "
                          "an adapter alone would not reproduce it: use --merged")
    vllm_problems = []
    if manifest is not None and manifest.mode == "lora" and not merged:
        from dreamd.daemon.serve.vllm import adapter_dir_problems

        vllm_problems = adapter_dir_problems(checkpoint_dir(layout.checkpoints, wanted) / "adapter", max_lora_rank)
        if vllm_problems and for_vllm:
            raise ExportError(f"vLLM would reject the adapter of {wanted}: " + "; ".join(vllm_problems))
        for problem in vllm_problems:
            click.echo(f"warning: vLLM would reject this adapter: {problem}", err=True)

    if target.exists():
        target.rmdir()  # empty: staging and rename put the export in its place
    tmp = staging_dir(target)
    try:
        if manifest is not None and not merged:
            folder = checkpoint_dir(layout.checkpoints, wanted)
            source = folder / ("adapter" if manifest.mode == "lora" else "model")
            shutil.copytree(source, tmp, dirs_exist_ok=True)
            kind = "peft adapter" if manifest.mode == "lora" else "model"
        else:
            _write_merged(config, layout, wanted, tmp)
            kind = "merged model"
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish_dir(tmp, target)
    emit({"exported": wanted, "kind": kind, "to": str(target.absolute()), "vllm_problems": vllm_problems}, as_json)


def _write_merged(config, layout, checkpoint_id: str, out: Path) -> None:
    from dreamd.trainers.checkpoints.weights import load_as

    loaded = load_as(config.model, layout.models, layout, checkpoint_id)  # a LoRA adapter comes merged
    loaded.model.save_pretrained(out, safe_serialization=True)
    loaded.tokenizer.save_pretrained(out)
