"""The memory-formation experiment: a three-phase protocol (acquisition, interference, persistence),
run on dreamd's own loop with the daemon's own settings.

    acquisition   logs teaching a made-up animal, the Zypher, go through the inbox; N dream cycles
    interference  logs about a similar animal, the Zyphrex (same questions, other answers); N cycles
    persistence   the Zypher's numbers after interference against those after acquisition

Five arms, same seed, same model, same trainer settings, the same examples per round:

    (a) dream_loop      the daemon's cycle as it runs (`loop.cycle.run_cycle`): rehearsals of the
                        memory graph played out with their memories and trained without them, the
                        signal agent, replay, the anchor share, the quality gate; `current` is
                        measured after each cycle (a rejected candidate is measured beside it)
    (d) replay_only     the same loop without dreams: each round as many replayed exchanges as (a)'s
                        round had dreams and replays, the same anchor share, the same gate
    (e) full_backprop   (a)'s own training examples, round by round, trained with full backprop
                        (completion-only loss) instead of the context-frozen step; no gate
    (b) plain_finetune  the same trainer on the phase's own log exchanges only (the pool the loop
                        replays from, held-out ones excluded): no dreams, no replay of older logs,
                        no anchor, no gate; round k takes as many examples as (a)'s cycle k
    (c) no_training     the base model, measured once: the chance line

The other arms run after (a) because their budget is (a)'s actual one (how many dreams the signal
agent kept is known only once the cycle ran). Measurements: measure.py, after every cycle or round
(the ungated arms' probe and anchor numbers at each phase's end only). Artefacts: report.py.
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dreamd.daemon.config import Config, config_from_dict
from dreamd.daemon.experiments.memory_formation.facts import CONCEPTS, heldout_probes, write_logs
from dreamd.daemon.service.state_dir import StateLayout
from dreamd.trainers.atomic import write_atomically
from dreamd.trainers.checkpoints.pointers import BASE

PHASES = (("acquisition", "Zypher"), ("interference", "Zyphrex"))
ARMS = {
    "dream_loop": "(a) full dream loop",
    "plain_finetune": "(b) plain fine-tuning",
    "no_training": "(c) no training",
    "replay_only": "(d) loop without dreams (replay only)",
    "full_backprop": "(e) (a)'s data, full backprop",
}


@dataclass
class ExperimentSettings:
    """The experiment's own knobs. Everything else (trainer, dreams, signal, gate) is the config in
    force, the daemon's defaults unless the operator changed them: no special case here."""

    cycles_per_phase: int = 2
    dreams_per_cycle: int | None = None  # None: the config's dreams.per_cycle
    facts: int = 12  # fact slots evaluated per concept (the logs always teach all twelve)
    heldout_per_fact: int = 2
    seed: int = 0
    quick: bool = False

    @classmethod
    def quick_run(cls, **overrides) -> ExperimentSettings:
        """One cycle per phase, half the dreams, half the facts evaluated: the artefacts in minutes."""
        return cls(**{"cycles_per_phase": 1, "dreams_per_cycle": 16, "facts": 6, "heldout_per_fact": 1,
                      "quick": True, **overrides})

    def __post_init__(self) -> None:
        if not (1 <= self.cycles_per_phase <= 50
                and (self.dreams_per_cycle is None or 1 <= self.dreams_per_cycle <= 256)):
            raise ValueError("cycles_per_phase must be 1-50 and dreams_per_cycle 1-256")
        if not (1 <= self.facts <= 12 and 1 <= self.heldout_per_fact <= 2):
            raise ValueError("facts must be 1-12 and heldout_per_fact 1-2")


def arm_config(base: Config, model_dir: Path, s: ExperimentSettings) -> dict:
    """The config every trained arm runs with: the operator's, with only the model directory (converted
    once, shared by every arm's state dir), the dream count and the seed set here."""
    raw = base.to_dict()
    raw["model"]["path"] = str(model_dir)
    if s.dreams_per_cycle:
        raw["dreams"]["per_cycle"] = s.dreams_per_cycle
    raw["training"]["seed"] = s.seed
    return raw


class Progress:
    """Progress lines: elapsed time, phase, arm, what happened."""

    def __init__(self, say: Callable[[str], None]):
        self.say, self.started = say, time.monotonic()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def __call__(self, phase: str, arm: str, text: str) -> None:
        self.say(f"[{self.elapsed:6.0f} s] {phase:<12} {arm:<15} {text}")


def brief(m: dict) -> str:
    z, x, probes = m["Zypher"], m["Zyphrex"], m["probes"]
    general = (f"probes loss {probes['loss']:.3f} acc {probes['accuracy']:.2f}" if probes
               else "probes measured at the phase's end")
    return (f"Zypher recall {z['recall']:.2f} logp {z['logprob']:.2f} | Zyphrex recall {x['recall']:.2f} "
            f"logp {x['logprob']:.2f} | {general}")


def _steps_of(layout: StateLayout, checkpoint: str | None) -> int:
    """Optimizer steps a round ran (dropped ones included: they cost the same)."""
    from dreamd.trainers.checkpoints.manifest import read_manifest

    return int(read_manifest(layout.checkpoints, checkpoint).metrics["steps"]) if checkpoint else 0


def loop_arm(raw: dict, root: Path, logs: dict, measurer_for, base: dict, s: ExperimentSettings, log: Progress,
             label: str, cycle: Callable[[int, str, int], dict]) -> tuple[list[dict], dict]:
    """An arm that runs the daemon's loop in its own state dir: each phase's logs go through the
    inbox, then `cycle(index, phase, k)` runs each cycle (returning run_cycle's result shape) and
    `current` is measured. Returns its points (index 0 is the base) and each phase's new memory ids."""
    from dreamd.memory_graph.embedder import Embedder
    from dreamd.memory_graph.ingest import Ingester
    from dreamd.trainers.checkpoints.pointers import read_pointer

    config = config_from_dict(raw)
    layout = StateLayout(root).ensure()
    ingester = Ingester(layout.inbox, layout.database, Embedder(config.embedder), config.inbox, config.graph)
    measure_at = measurer_for(config, layout)
    points = [{"index": 0, "phase": "start", "cycle": 0, "checkpoint": BASE, "steps": 0, "examples": 0,
               "measurement": base}]
    pools: dict[str, list[int]] = {}
    for phase, concept in PHASES:
        known = _max_node(ingester.db)
        dropped = {ingester.inbox.drop(path).name for path in logs[concept]}
        report = ingester.drain(trusted=frozenset(dropped))
        pools[phase] = [n for (n,) in ingester.db.execute(
            "SELECT id FROM memory_nodes WHERE id > ? ORDER BY id", (known,)).fetchall()]
        log(phase, label, f"inbox: {report.ingested} {concept} logs ingested, {report.messages} messages, "
                          f"{len(pools[phase])} new memories")
        for k in range(1, s.cycles_per_phase + 1):
            index = len(points)
            started = time.monotonic()
            try:
                result = cycle(index, phase, k)
            except Exception as exc:  # a failed cycle is a result too; `current` did not move
                result = {"outcome": f"error: {exc!r}", "steps": {}}
            steps = result.get("steps", {})
            made, trained, gate = steps.get("dreams", {}), steps.get("training", {}), steps.get("gate", {})
            candidate = trained.get("candidate")
            current = read_pointer(layout, "current")
            point = {
                "index": index, "phase": phase, "cycle": k, "phase_end": k == s.cycles_per_phase,
                "checkpoint": current, "candidate": candidate,
                "outcome": result.get("outcome"), "gate_failed": gate.get("failed", []),
                "gate_reasons": gate.get("reasons", []), "dreams": made.get("dreams", 0),
                "accepted_dreams": made.get("accepted", 0), "accepted_by_kind": made.get("accepted_by_kind", {}),
                "logged_targets": made.get("logged_targets", 0), "examples": trained.get("examples", 0),
                "dream_examples": trained.get("dream_examples", 0),
                "anchor_examples": trained.get("anchor_examples", 0),
                "neighbour_examples": trained.get("neighbour_examples", 0),
                "example_ids": trained.get("example_ids", []),
                "steps": _steps_of(layout, candidate), "first_loss": trained.get("first_loss"),
                "last_loss": trained.get("last_loss"),
                "seconds": {"dreams": made.get("seconds"), "training": trained.get("seconds"),
                            "gate": gate.get("seconds")},
                "cycle_seconds": round(time.monotonic() - started, 1), "measurement": measure_at(current),
            }
            if candidate and candidate != current:  # what the gate kept out, measured beside it
                point["candidate_measurement"] = measure_at(candidate)
            points.append(point)
            log(phase, label,
                f"cycle {k}/{s.cycles_per_phase}: {point['accepted_dreams']}/{point['dreams']} dreams accepted, "
                f"{point['examples']} examples, {point['steps']} steps, {point['outcome']}"
                + (f" ({', '.join(point['gate_failed'])})" if point["gate_failed"] else "")
                + f"; {brief(point['measurement'])}")
    return points, pools


def replay_cycle(raw: dict, root: Path, seed: int, count: int) -> dict:
    """Arm (d)'s cycle: the loop without dreams. `count` replayed exchanges (never held-out ones),
    the anchor share on top, one round from `current`, the quality gate; run_cycle's result shape."""
    from contextlib import closing

    from dreamd.daemon.dreaming.training_set import anchor_examples, replay_examples, share_count
    from dreamd.daemon.gate.judge import apply_judgement, judge_candidate
    from dreamd.daemon.gate.suite import held_out_nodes
    from dreamd.daemon.loop.cycle import NOTHING_TO_TRAIN, anchors_of, train_candidate
    from dreamd.memory_graph.database.store import open_store
    from dreamd.memory_graph.embedder import Embedder

    config = config_from_dict(raw)
    layout = StateLayout(root).ensure()
    with closing(open_store(layout.database)) as db:
        held = frozenset(held_out_nodes(db, config.evaluation.heldout_percent))
        replays = replay_examples(db, count, config.dreams.replay_history_messages, seed, held)
        if not replays:
            return {"outcome": NOTHING_TO_TRAIN, "steps": {}}
        anchors = anchor_examples(anchors_of(config, layout), share_count(len(replays), config.dreams.anchor_fraction),
                                  seed)
        training = train_candidate(config, layout, db, replays + anchors)
        judgement = judge_candidate(config, layout, db, training["candidate"], Embedder(config.embedder).encode)
        applied = apply_judgement(layout, db, judgement)
    gate = {"failed": judgement.decision.failed, "reasons": judgement.decision.reasons}
    return {"outcome": applied["decision"], "steps": {"training": training, "gate": gate}}


def examples_by_id(db, ids: list[str], history: int, anchors: dict) -> list:
    """(a)'s training examples again, from the ids its round recorded (dream:, replay:, anchor:,
    neighbour:; `anchors` holds the bank's and the neighbour cache's by id)."""
    from dreamd.daemon.dreaming.training_set import DREAM_COLUMNS, dream_example, replay_example

    out = []
    for example_id in ids:
        kind, _, key = example_id.partition(":")
        if kind == "dream":
            out.append(dream_example(db.execute(f"SELECT {DREAM_COLUMNS} FROM dreams WHERE id = ?",
                                                (int(key),)).fetchone()))
        elif kind == "replay":
            out.append(replay_example(db, int(key), history))
        elif kind in ("anchor", "neighbour"):
            out.append(anchors[key].example(kind))
    return [e for e in out if e is not None]


def full_backprop_arm(raw: dict, root: Path, loop_root: Path, loop_points: list[dict], measurer_for,
                      base: dict, log: Progress) -> list[dict]:
    """Arm (e): round k trains on exactly (a)'s cycle-k examples, with full backprop
    (completion-only loss) from the previous round's checkpoint; no gate."""
    from contextlib import closing

    from dreamd.daemon.loop.cycle import anchors_of, neighbour_cache
    from dreamd.memory_graph.database.store import open_store
    from dreamd.trainers.context_frozen import completion_only_batch_loss

    config = config_from_dict(raw)
    layout = StateLayout(root).ensure()
    loop_layout = StateLayout(loop_root)
    anchors = {**neighbour_cache(config, loop_layout).known(), **{a.id: a for a in anchors_of(config, loop_layout)}}
    points = [{"index": 0, "phase": "start", "cycle": 0, "checkpoint": BASE, "steps": 0, "examples": 0,
               "measurement": base}]
    checkpoint = BASE
    with closing(open_store(loop_layout.database)) as db:
        for loop_point in loop_points[1:]:
            examples = examples_by_id(db, loop_point.get("example_ids", []), config.dreams.replay_history_messages,
                                      anchors)
            checkpoint, point = _train_and_measure(config, layout, examples, checkpoint, loop_point, measurer_for,
                                                   completion_only_batch_loss)
            points.append(point)
            log(loop_point["phase"], "full backprop", f"round {point['cycle']}: {len(examples)} examples, "
                                                      f"{point['steps']} steps; {brief(point['measurement'])}")
    return points


def _train_and_measure(config: Config, layout: StateLayout, examples: list, checkpoint: str, loop_point: dict,
                       measurer_for, loss_fn) -> tuple[str, dict]:
    """One round of an arm without the gate (from `checkpoint`), measured; (new checkpoint, point)."""
    from dreamd.trainers.model_store import load_model
    from dreamd.trainers.round import train_round

    started = time.monotonic()
    losses: list[float] = []
    if examples:
        checkpoint = train_round(load_model(config.model, layout.models), examples, config.training, layout,
                                 parent_id=checkpoint, on_step=lambda _i, r: losses.append(r.loss), loss_fn=loss_fn)
    point = {"index": loop_point["index"], "phase": loop_point["phase"], "cycle": loop_point["cycle"],
             "checkpoint": checkpoint, "examples": len(examples),
             "steps": _steps_of(layout, checkpoint) if examples else 0,
             "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
             "cycle_seconds": round(time.monotonic() - started, 1),
             # Without a gate nothing else measures the probes: at each phase's end (the figures
             # reported), not after every round (40 s each: 4 of an hour's run).
             "measurement": measurer_for(config, layout)(checkpoint, general=loop_point.get("phase_end", True))}
    return checkpoint, point


def plain_arm(raw: dict, root: Path, db, pools: dict, loop_points: list[dict], measurer_for, base: dict,
              s: ExperimentSettings, log: Progress) -> list[dict]:
    """Arm (b): round k trains on as many of the phase's own exchanges as (a)'s cycle k trained
    examples, from the previous round's checkpoint; no dreams, no replay of older logs, no gate."""
    from dreamd.daemon.dreaming.training_set import replay_example
    from dreamd.daemon.gate.suite import held_out_nodes
    from dreamd.trainers.context_frozen import completion_only_batch_loss

    config = config_from_dict(raw)
    layout = StateLayout(root).ensure()
    held = set(held_out_nodes(db, config.evaluation.heldout_percent))
    points = [{"index": 0, "phase": "start", "cycle": 0, "checkpoint": BASE, "steps": 0, "examples": 0,
               "measurement": base}]
    checkpoint = BASE
    for phase, concept in PHASES:
        # The same exchanges (and context) the loop's replay would give, held-out ones excluded.
        pool = [e for e in (replay_example(db, n, config.dreams.replay_history_messages)
                            for n in pools[phase] if n not in held) if e is not None]
        random.Random(s.seed).shuffle(pool)
        cursor = 0
        for loop_point in (p for p in loop_points if p["phase"] == phase):
            wanted = loop_point["examples"]
            examples = []
            for k in range(wanted):  # walk the shuffled pool round and round: every exchange in turn
                example = pool[(cursor + k) % len(pool)]
                examples.append(dataclasses.replace(example, id=f"{example.id}#{cursor + k}"))
            cursor += wanted
            checkpoint, point = _train_and_measure(config, layout, examples, checkpoint, loop_point, measurer_for,
                                                   completion_only_batch_loss)
            points.append(point)
            log(phase, "plain fine-tune", f"round {point['cycle']}/{s.cycles_per_phase}: {len(examples)} {concept} "
                                         f"examples, {point['steps']} steps; {brief(point['measurement'])}")
    return points


def run_experiment(config: Config, models_dir: Path, out: Path, s: ExperimentSettings,
                   say: Callable[[str], None] = print) -> dict:
    """Run the five arms into `out` and write every artefact; returns the results (also results.json)."""
    from dreamd.daemon.experiments.memory_formation.measure import GeneralReference, Measurer, general_suite, measure
    from dreamd.daemon.experiments.memory_formation.report import write_artefacts
    from dreamd.memory_graph.database.store import open_store
    from dreamd.memory_graph.embedder import Embedder
    from dreamd.trainers.anchors import base_anchors, cache_path
    from dreamd.trainers.gate.metrics import GENERAL_METRICS, base_reference
    from dreamd.trainers.model_store import load_model, resolve_model_dir

    out.mkdir(parents=True, exist_ok=True)
    log = Progress(say)
    model_dir = resolve_model_dir(config.model, models_dir)
    raw = arm_config(config, model_dir, s)
    arm_config_obj = config_from_dict(raw)
    logs = {concept: write_logs(concept, out / "logs", s.seed) for concept in CONCEPTS}
    probes = {c: heldout_probes(c, s.facts, s.heldout_per_fact) for c in CONCEPTS}
    log("start", "", f"model {model_dir.name}; {s.cycles_per_phase} cycle(s) per phase, "
                     f"{arm_config_obj.dreams.per_cycle} dreams "
                     f"per cycle, {s.facts} facts x {s.heldout_per_fact} held-out question(s) per concept")

    timings: dict[str, float] = {}
    started = time.monotonic()
    base_model = load_model(arm_config_obj.model, models_dir)
    anchors = base_anchors(model_dir, models_dir, lambda loaded=base_model: loaded)
    for arm in ("dream-loop", "replay-only", "full-backprop"):  # answered once, not once per arm
        (out / "arms" / arm / "models").mkdir(parents=True, exist_ok=True)
        shutil.copy2(cache_path(models_dir, model_dir), cache_path(out / "arms" / arm / "models", model_dir))
    suite = general_suite(anchors, arm_config_obj.evaluation.max_new_tokens)
    embed = Embedder(arm_config_obj.embedder).encode
    reference = base_reference(base_model, suite, embed)
    general = GeneralReference(suite, embed, reference)
    base = measure(base_model, probes, {k: reference.metrics[k] for k in GENERAL_METRICS})
    del base_model
    timings["no_training"] = round(time.monotonic() - started, 1)
    log("start", "no training", f"base model: {brief(base)}")

    def measurer_for(cfg: Config, layout: StateLayout) -> Measurer:
        return Measurer(cfg, layout, probes, general, base)

    results = {
        "experiment": "memory-formation", "quick": s.quick, "settings": dataclasses.asdict(s),
        "model": model_dir.name, "config": {k: raw[k] for k in ("training", "dreams", "signal", "gate", "evaluation")},
        "phases": [p for p, _ in PHASES], "concepts": list(CONCEPTS),
        "probes": {c: [dataclasses.asdict(p) for p in ps] for c, ps in probes.items()},
        "logs": {c: [str(p.relative_to(out)) for p in paths] for c, paths in logs.items()},
        "started_at": time.time(), "timings": timings, "arms": {},
    }

    from dreamd.daemon.loop.cycle import run_cycle

    arms = out / "arms"

    def timed(name: str, run):
        started = time.monotonic()
        value = run()
        timings[name] = round(time.monotonic() - started, 1)
        return value

    def dream_cycle(index: int, _phase: str, _k: int) -> dict:
        return run_cycle(raw, str(arms / "dream-loop"), seed=s.seed * 1000 + index)

    loop_points, pools = timed("dream_loop", lambda: loop_arm(raw, arms / "dream-loop", logs, measurer_for, base, s,
                                                             log, "dream loop", dream_cycle))
    results["arms"]["dream_loop"] = loop_points
    _save(out, results)  # a later failure still leaves the first arm's numbers

    def replay_only(index: int, _phase: str, _k: int) -> dict:
        point = loop_points[index]  # as many real exchanges as (a) had dreams and replays
        return replay_cycle(raw, arms / "replay-only", s.seed * 1000 + index,
                            point["examples"] - point.get("anchor_examples", 0) - point.get("neighbour_examples", 0))

    results["arms"]["replay_only"] = timed("replay_only", lambda: loop_arm(
        raw, arms / "replay-only", logs, measurer_for, base, s, log, "replay only", replay_only)[0])
    _save(out, results)
    db = open_store(StateLayout(arms / "dream-loop").database)
    results["arms"]["plain_finetune"] = timed("plain_finetune", lambda: plain_arm(
        raw, arms / "plain-finetune", db, pools, loop_points, measurer_for, base, s, log))
    _save(out, results)
    results["arms"]["full_backprop"] = timed("full_backprop", lambda: full_backprop_arm(
        raw, arms / "full-backprop", arms / "dream-loop", loop_points, measurer_for, base, log))
    # (c): the same base numbers at every checkpoint, so every table row and plot has all three.
    results["arms"]["no_training"] = [{"index": p["index"], "phase": p["phase"], "cycle": p["cycle"],
                                       "checkpoint": BASE, "steps": 0, "examples": 0, "measurement": base}
                                      for p in loop_points]
    results["budget"] = {phase: {arm: sum(p["steps"] for p in results["arms"][arm] if p["phase"] == phase)
                                 for arm in ARMS} for phase, _ in PHASES}
    results.update(headline(results))
    timings["total"] = round(log.elapsed, 1)
    written = write_artefacts(results, out)
    _save(out, results)
    log("done", "", f"{timings['total']:.0f} s; artefacts in {out}: " + ", ".join(sorted(p.name for p in written)))
    return results


def headline(results: dict) -> dict:
    """The figures the issue asks for, at the top level of the results: arm (a)'s Zypher recall
    after acquisition and after interference, its Zyphrex recall, its probe accuracy drop (base
    minus end, in accuracy units) and probe loss rise (relative), and the same for the others."""
    points = {arm: {p["index"]: p["measurement"] for p in ps} for arm, ps in results["arms"].items()}
    n = results["settings"]["cycles_per_phase"]
    base = points["dream_loop"][0]

    def figures(arm: str) -> dict:
        acquired, end = points[arm][n], points[arm][2 * n]
        return {"zypher_recall_acquired": acquired["Zypher"]["recall"],
                "zypher_recall_after_interference": end["Zypher"]["recall"],
                "zyphrex_recall": end["Zyphrex"]["recall"],
                "zypher_confusion": end["Zypher"]["confusion"],
                "probe_accuracy_drop": round(base["probes"]["accuracy"] - end["probes"]["accuracy"], 4),
                "probe_loss_rise": round((end["probes"]["loss"] - base["probes"]["loss"]) / base["probes"]["loss"], 4),
                "anchor_kl": end["anchor_kl"]}

    out = figures("dream_loop")
    prefixes = {"plain_finetune": "plain", "replay_only": "replay_only", "full_backprop": "full_backprop"}
    for arm, prefix in prefixes.items():
        if arm in points:
            out.update({f"{prefix}_{key}": value for key, value in figures(arm).items()})
    out["plain_zypher_after_interference"] = out.get("plain_zypher_recall_after_interference")
    out["base_zypher_recall"] = base["Zypher"]["recall"]
    out["base_probe_accuracy"] = base["probes"]["accuracy"]
    return out


def _max_node(db) -> int:
    return db.execute("SELECT COALESCE(MAX(id), 0) FROM memory_nodes").fetchone()[0]


def _save(out: Path, results: dict) -> Path:
    path = out / "results.json"
    write_atomically(path, json.dumps(results, indent=1, default=str) + "\n")  # durable: an hour of runs
    return path
