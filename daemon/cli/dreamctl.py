"""`dreamctl`: look at and steer dreamd. Every command takes --json."""

from __future__ import annotations

import click

from dreamd.daemon.cli.common import (
    ConfigProblem,
    answer_alone,
    config_option,
    echo_json,
    emit,
    json_option,
    model_to_ask,
    read_config,
    state_dir_option,
)
from dreamd.daemon.config import ConfigError, render_example
from dreamd.daemon.service.logs import configure_logging
from dreamd.daemon.service.state_dir import StateLayout, resolve_state_dir


class Context:
    def __init__(self, config_path, state_dir):
        self.config_path = config_path
        self.state_dir = state_dir

    def config(self):
        config = read_config(self.config_path)
        configure_logging("console", config.logging.level)
        return config

    def layout(self) -> StateLayout:
        return StateLayout(resolve_state_dir(self.state_dir))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@config_option
@state_dir_option
@click.pass_context
def main(ctx, config_path, state_dir):
    """Look at and steer dreamd, the dream-loop training daemon.

    Exit codes: 0 success, 1 failure, 2 invalid configuration or usage.
    """
    ctx.obj = Context(config_path, state_dir)


@main.command("config")
@click.option("--example", is_flag=True, help="Print the commented example config with every key and default.")
@json_option
@click.pass_obj
def config_cmd(obj: Context, example: bool, as_json: bool):
    """Validate the config file and print the settings in force."""
    if example:
        click.echo(render_example(), nl=False)
        return
    config = obj.config()
    data = {"config_file": str(config.source or "(none found: defaults)"), "state_dir": str(obj.layout().root)}
    if as_json:
        echo_json({**data, **config.to_dict()})
        return
    flat = {f"{s}.{k}": v for s, section in config.to_dict().items() for k, v in section.items()}
    emit({**data, **flat}, as_json=False)


@main.command()
@json_option
@click.pass_obj
def prepare(obj: Context, as_json: bool):
    """Make the configured model and embedder ready to load (converts the embedded GGUF once)."""
    from dreamd.memory_graph.embedder import Embedder, EmbedderLoadError
    from dreamd.trainers.model_store import ModelLoadError, resolve_model_dir

    config = obj.config()
    layout = obj.layout().ensure()
    try:
        model_dir = resolve_model_dir(config.model, layout.models)
        embedder = Embedder(config.embedder)
    except (ModelLoadError, EmbedderLoadError) as exc:
        raise ConfigProblem(exc) from None
    emit({"model_dir": str(model_dir), "embedder_dir": str(embedder.directory),
          "embedding_dimension": embedder.dimension}, as_json)


@main.command()
@click.argument("question")
@click.option("--max-new-tokens", default=64, show_default=True, help="Longest answer, in tokens.")
@click.option("--checkpoint", "checkpoint_id", default=None, metavar="ID",
              help="Ask this checkpoint (verified first) instead of the one `current` names.")
@click.option("--base", "use_base", is_flag=True, help="Ask the base model, without any training.")
@json_option
@click.pass_obj
def ask(obj: Context, question: str, max_new_tokens: int, checkpoint_id: str | None, use_base: bool,
        as_json: bool):
    """Ask the model one question (greedy decoding, its own chat template). It is the model
    `current` names, the one that learned, unless --checkpoint or --base choose another."""
    from dreamd.trainers.checkpoints.manifest import CheckpointError
    from dreamd.trainers.checkpoints.pointers import BASE
    from dreamd.trainers.model_store import ModelLoadError

    if checkpoint_id and use_base:
        raise click.UsageError("--checkpoint and --base choose different models: give one")
    config = obj.config()
    layout = obj.layout().ensure()
    try:
        checkpoint, loaded = model_to_ask(config, layout, BASE if use_base else checkpoint_id)
    except ModelLoadError as exc:
        raise ConfigProblem(exc) from None
    except CheckpointError as exc:
        raise click.ClickException(f"checkpoint {exc.checkpoint_id} does not verify, so it cannot answer: "
                                   f"{exc}") from None
    answer = answer_alone(loaded, question, max_new_tokens)
    emit({"question": question, "answer": answer, "checkpoint": checkpoint, "model_dir": str(loaded.directory)},
         as_json)


@main.command()
@click.option("--dreams", default=8, show_default=True, help="Dreams in the demo's cycle (0: skip the cycle).")
@json_option
@click.pass_obj
def demo(obj: Context, dreams: int, as_json: bool):
    """Run the real dreamd once on the bundled sample logs, saying what each stage does: the
    inbox and the memory graph, collisions, a question only the logs answer (from the weights
    alone and with a memory), then one dream cycle (dreams, signal agent, training round, quality
    gate), the question again from the weights alone (did the loop learn it?) and the status.
    Starts dreamd on the state dir and stops it at the end (or uses, and leaves running, the one
    already there)."""
    from dreamd.daemon.cli.demo import DemoError, run_demo
    from dreamd.daemon.service.process import DaemonExited
    from dreamd.memory_graph.embedder import EmbedderLoadError
    from dreamd.trainers.model_store import ModelLoadError

    config = obj.config()
    say = (lambda line: click.echo(line, err=True)) if as_json else click.echo
    try:
        summary = run_demo(config, obj.layout(), say, dreams=dreams)
    except (ConfigError, ModelLoadError, EmbedderLoadError) as exc:
        raise ConfigProblem(exc) from None
    except (DemoError, DaemonExited) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        echo_json(summary)


# Each stage's commands live in their own module (importing no torch at module level, so that
# `dreamctl status` stays fast) and are added to the group here.
# service: status, pause, resume, dream, reload, logs
from dreamd.daemon.cli import service as cli_service  # noqa: E402  (added to `main`, defined above)

main.add_command(cli_service.status)
main.add_command(cli_service.pause)
main.add_command(cli_service.resume)
main.add_command(cli_service.dream)
main.add_command(cli_service.reload)
main.add_command(cli_service.logs)

from dreamd.daemon.cli.checkpoints import checkpoints_cmd, rollback_cmd  # noqa: E402  (added to `main`, defined above)

main.add_command(checkpoints_cmd)
main.add_command(rollback_cmd)

from dreamd.daemon.cli.ingest import ingest_cmd  # noqa: E402  (added to `main`, defined above)

main.add_command(ingest_cmd)

from dreamd.daemon.cli.review_export import export, review  # noqa: E402  (added to `main`, defined above)

main.add_command(review)
main.add_command(export)

from dreamd.daemon.cli.report import report  # noqa: E402  (added to `main`, defined above)

main.add_command(report)

from dreamd.daemon.cli.experiment import experiment  # noqa: E402  (added to `main`, defined above)

main.add_command(experiment)
