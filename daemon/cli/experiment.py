"""`dreamctl experiment memory-formation`: the three-phase memory-formation experiment.

Imported by `dreamctl` at start, so nothing heavy at module level: torch, the model and matplotlib
are imported only when the command runs.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from dreamd.daemon.cli.common import ConfigProblem, echo_json, json_option
from dreamd.daemon.config import ConfigError


@click.group("experiment")
def experiment():
    """Controlled experiments on the dream loop (they run in fresh state dirs of their own and
    never touch the daemon's own state, only its converted model)."""


@experiment.command("memory-formation")
@click.option("--quick", is_flag=True,
              help="One cycle per phase, 16 dreams, 6 facts x 1 held-out question: the artefacts in minutes.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder (default: <state>/experiments/memory-formation-<time>).")
@click.option("--cycles", type=click.IntRange(1, 50), default=None,
              help="Dream cycles (and rounds of the other arms) per phase [default: 2; 1 with --quick].")
@click.option("--dreams", type=click.IntRange(1, 256), default=None,
              help="Dreams per cycle [default: the config's dreams.per_cycle; 16 with --quick].")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True, help="Seed of every arm.")
@json_option
@click.pass_obj
def memory_formation(obj, quick: bool, out_dir: Path | None, cycles: int | None, dreams: int | None, seed: int,
                     as_json: bool):
    """Teach the model a made-up animal (the Zypher) through the inbox, then a similar one (the
    Zyphrex), and measure at every checkpoint how well it recalls each (held-out questions: fact
    log-probability and greedy recall), the general probe bank and KL to the base on the anchor
    bank, for five arms under the same seed and example budget: (a) the full dream loop, (b) plain
    fine-tuning on the same logs, (c) no training, (d) the loop without dreams (replay only), (e)
    (a)'s own training data with full backprop instead of the context-frozen step.

    Writes results.json, table.md, summary.md, PNG learning curves and index.html into the output
    folder; --json prints the headline figures (zypher_recall_acquired, probe_accuracy_drop, ...)
    at the top level. The trainer, dreams, signal agent and gate are the config in force (the
    daemon's defaults unless changed): the experiment has no settings of its own for them.
    """
    from dreamd.daemon.experiments.memory_formation.run import ExperimentSettings, headline, run_experiment
    from dreamd.memory_graph.embedder import EmbedderLoadError
    from dreamd.trainers.model_store import ModelLoadError

    config = obj.config()
    layout = obj.layout()
    given = (("cycles_per_phase", cycles), ("dreams_per_cycle", dreams))
    overrides = {k: v for k, v in given if v is not None}
    settings = (ExperimentSettings.quick_run(seed=seed, **overrides) if quick
                else ExperimentSettings(seed=seed, **overrides))
    out = out_dir or layout.root / "experiments" / f"memory-formation-{time.strftime('%Y%m%d-%H%M%S')}"
    say = (lambda line: click.echo(line, err=True)) if as_json else click.echo
    try:
        results = run_experiment(config, layout.ensure().models, out.absolute(), settings, say)
    except (ConfigError, ModelLoadError, EmbedderLoadError) as exc:
        raise ConfigProblem(exc) from None
    summary = (out / "summary.md").read_text(encoding="utf-8")
    if as_json:
        echo_json({**headline(results), "out": str(out), "results": str(out / "results.json"),
                   "artefacts": results.get("artefacts", []), "budget": results["budget"],
                   "seconds": results["timings"]["total"], "summary": summary})
        return
    click.echo("")
    click.echo(summary)
    click.echo(f"open {out / 'index.html'}")
