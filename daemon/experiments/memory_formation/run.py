"""The memory-formation experiment: a three-phase protocol (acquisition, interference, persistence),
run on dreamd's own loop.

    acquisition   logs teaching a made-up animal, the Zypher, go through the inbox; N dream cycles
    interference  logs about a similar animal, the Zyphrex (same questions, other answers); N cycles
    persistence   the Zypher's numbers after interference against those after acquisition

Three arms, same seed, same model, same trainer settings, same step budget:

    (a) dream_loop      the daemon's cycle as it runs (`loop.cycle.run_cycle`): dreams from the memory
                        graph, the signal agent, a round on accepted dreams + replayed real exchanges
                        (from *every* memory, the Zypher's too during interference), the quality
                        gate; `current` is measured after each cycle, so a rejected candidate
                        leaves the numbers where they were (that is the loop's behaviour, and the
                        candidate is measured beside it)
    (b) plain_finetune  the same trainer on the phase's own log exchanges only (the pool the loop
                        replays from, held-out ones excluded): no dreams, no replay of older logs,
                        no gate; round k takes exactly as many examples as (a)'s cycle k trained on,
                        so both arms run the same optimizer steps in every round
    (c) no_training     the base model, measured once: the chance line

(b) runs after (a) because its budget is (a)'s actual one (how many dreams the signal agent kept is
known only once the cycle ran). Measurements: measure.py. Artefacts: report.py.
"""

from __future__ import annotations

import dataclasses
import json
import random
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
}


@dataclass
class ExperimentSettings:
    """The experiment's knobs; the trainer settings apply to both trained arms alike."""

    cycles_per_phase: int = 3
    dreams_per_cycle: int = 8
    facts: int = 12  # fact slots evaluated per concept (the logs always teach all twelve)
    heldout_per_fact: int = 2
    # A LoRA rate twenty times the daemon's default and three epochs per round: at the default 1e-4
    # a few rounds barely move a fact's log-probability, and the question is what the loop does with
    # a learning signal, not whether 1e-4 is slow. Measured before choosing (plain fine-tuning, all
    # 36 Zypher exchanges): 18 steps at 1e-3 raised the value log-probability from -5.3 to -3.2 with
    # 1 of 24 held-out questions recalled; 27 steps at 2e-3 reached -1.5 and 4 of 24.
    lora_learning_rate: float = 2e-3
    epochs: int = 3
    batch_size: int = 4
    # Three replayed real exchanges per accepted dream (the daemon's default is one): the facts are
    # in the logs, and a cycle of 8 dreams would otherwise train on ~10 examples.
    replay_fraction: float = 0.75
    seed: int = 0
    quick: bool = False

    @classmethod
    def quick_run(cls, **overrides) -> ExperimentSettings:
        """One cycle per phase, few dreams, half the facts evaluated: the artefacts in minutes."""
        return cls(**{"cycles_per_phase": 1, "dreams_per_cycle": 4, "facts": 6, "heldout_per_fact": 1,
                      "quick": True, **overrides})

    def __post_init__(self) -> None:
        if not (1 <= self.cycles_per_phase <= 50 and 1 <= self.dreams_per_cycle <= 256):
            raise ValueError("cycles_per_phase must be 1-50 and dreams_per_cycle 1-256")
        if not (1 <= self.facts <= 12 and 1 <= self.heldout_per_fact <= 2):
            raise ValueError("facts must be 1-12 and heldout_per_fact 1-2")


def arm_config(base: Config, model_dir: Path, s: ExperimentSettings) -> dict:
    """The config both trained arms run with: the operator's, with the experiment's trainer and
    dream settings on top (LoRA always: the rate above is a LoRA rate)."""
    raw = base.to_dict()
    raw["model"]["path"] = str(model_dir)  # converted once; every arm's state dir shares it
    raw["dreams"].update(per_cycle=s.dreams_per_cycle, batch_size=s.dreams_per_cycle,
                         replay_fraction=s.replay_fraction)
    raw["training"].update(mode="lora", lora_learning_rate=s.lora_learning_rate, epochs=s.epochs,
                           batch_size=s.batch_size, seed=s.seed)
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
    z, x = m["Zypher"], m["Zyphrex"]
    return (f"Zypher recall {z['recall']:.2f} logp {z['logprob']:.2f} | Zyphrex recall {x['recall']:.2f} "
            f"logp {x['logprob']:.2f} | probes loss {m['probes']['loss']:.3f} acc {m['probes']['accuracy']:.2f}")


class Measurer:
    """Measures checkpoints of one arm's state dir, each once (the same weights, the same numbers)."""

    def __init__(self, config: Config, layout: StateLayout, probes: dict, base: dict):
        # The base is measured once for all arms: a cycle that promoted nothing shows its numbers.
        self.config, self.layout, self.probes, self.cache = config, layout, probes, {BASE: base}

    def __call__(self, checkpoint: str) -> dict:
        from dreamd.daemon.experiments.memory_formation.measure import measure
        from dreamd.trainers.checkpoints.weights import load_as

        if checkpoint not in self.cache:
            loaded = load_as(self.config.model, self.layout.models, self.layout, checkpoint)
            self.cache[checkpoint] = measure(loaded, self.probes)
        return self.cache[checkpoint]


def _steps_of(layout: StateLayout, checkpoint: str | None) -> int:
    """Optimizer steps a round ran (dropped ones included: they cost the same)."""
    from dreamd.trainers.checkpoints.manifest import read_manifest

    return int(read_manifest(layout.checkpoints, checkpoint).metrics["steps"]) if checkpoint else 0


def dream_loop_arm(raw: dict, root: Path, logs: dict, measurer_for, base: dict, s: ExperimentSettings,
                   log: Progress) -> tuple[list[dict], dict]:
    """Arm (a). Returns its points (index 0 is the base) and each phase's new memory node ids."""
    from dreamd.daemon.loop.cycle import run_cycle
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
        log(phase, "dream loop", f"inbox: {report.ingested} {concept} logs ingested, {report.messages} messages, "
                                 f"{len(pools[phase])} new memories")
        for cycle in range(1, s.cycles_per_phase + 1):
            index = len(points)
            started = time.monotonic()
            try:
                result = run_cycle(raw, str(root), seed=s.seed * 1000 + index)
            except Exception as exc:  # a failed cycle is a result too; `current` did not move
                result = {"outcome": f"error: {exc!r}", "steps": {}}
            steps = result.get("steps", {})
            made, trained, gate = steps.get("dreams", {}), steps.get("training", {}), steps.get("gate", {})
            candidate = trained.get("candidate")
            current = read_pointer(layout, "current")
            point = {
                "index": index, "phase": phase, "cycle": cycle, "checkpoint": current, "candidate": candidate,
                "outcome": result.get("outcome"), "gate_reasons": gate.get("reasons", []),
                "dreams": made.get("dreams", 0), "accepted_dreams": made.get("accepted", 0),
                "examples": trained.get("examples", 0), "dream_examples": trained.get("dream_examples", 0),
                "steps": _steps_of(layout, candidate), "first_loss": trained.get("first_loss"),
                "last_loss": trained.get("last_loss"), "cycle_seconds": round(time.monotonic() - started, 1),
                "measurement": measure_at(current),
            }
            if candidate and candidate != current:  # what the gate kept out, measured beside it
                point["candidate_measurement"] = measure_at(candidate)
            points.append(point)
            log(phase, "dream loop",
                f"cycle {cycle}/{s.cycles_per_phase}: {point['accepted_dreams']}/{point['dreams']} dreams accepted, "
                f"{point['examples']} examples, {point['steps']} steps, {point['outcome']}; "
                f"{brief(point['measurement'])}")
    return points, pools


def plain_arm(raw: dict, root: Path, db, pools: dict, loop_points: list[dict], measurer_for, base: dict,
              s: ExperimentSettings, log: Progress) -> list[dict]:
    """Arm (b): round k trains on as many of the phase's own exchanges as (a)'s cycle k trained
    examples, from the previous round's checkpoint; no dreams, no replay of older logs, no gate."""
    from dreamd.daemon.dreaming.training_set import replay_example
    from dreamd.daemon.gate.suite import held_out_nodes
    from dreamd.trainers.context_frozen import completion_only_batch_loss
    from dreamd.trainers.model_store import load_model
    from dreamd.trainers.round import train_round

    config = config_from_dict(raw)
    layout = StateLayout(root).ensure()
    measure_at = measurer_for(config, layout)
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
            wanted, started = loop_point["examples"], time.monotonic()
            examples = []
            for k in range(wanted):  # walk the shuffled pool round and round: every exchange in turn
                example = pool[(cursor + k) % len(pool)]
                examples.append(dataclasses.replace(example, id=f"{example.id}#{cursor + k}"))
            cursor += wanted
            losses: list[float] = []
            if examples:
                checkpoint = train_round(load_model(config.model, layout.models), examples, config.training, layout,
                                         parent_id=checkpoint,
                                         on_step=lambda _i, r, losses=losses: losses.append(r.loss),
                                         loss_fn=completion_only_batch_loss)
            point = {"index": loop_point["index"], "phase": phase, "cycle": loop_point["cycle"],
                     "checkpoint": checkpoint, "examples": len(examples),
                     "steps": _steps_of(layout, checkpoint) if examples else 0,
                     "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
                     "cycle_seconds": round(time.monotonic() - started, 1), "measurement": measure_at(checkpoint)}
            points.append(point)
            log(phase, "plain fine-tune", f"round {point['cycle']}/{s.cycles_per_phase}: {len(examples)} {concept} "
                                         f"examples, {point['steps']} steps; {brief(point['measurement'])}")
    return points


def run_experiment(config: Config, models_dir: Path, out: Path, s: ExperimentSettings,
                   say: Callable[[str], None] = print) -> dict:
    """Run the three arms into `out` and write every artefact; returns the results (also results.json)."""
    from dreamd.daemon.experiments.memory_formation.measure import measure
    from dreamd.daemon.experiments.memory_formation.report import write_artefacts
    from dreamd.memory_graph.database.store import open_store
    from dreamd.trainers.model_store import load_model, resolve_model_dir

    out.mkdir(parents=True, exist_ok=True)
    log = Progress(say)
    model_dir = resolve_model_dir(config.model, models_dir)
    raw = arm_config(config, model_dir, s)
    arm_config_obj = config_from_dict(raw)
    logs = {concept: write_logs(concept, out / "logs", s.seed) for concept in CONCEPTS}
    probes = {c: heldout_probes(c, s.facts, s.heldout_per_fact) for c in CONCEPTS}
    log("start", "", f"model {model_dir.name}; {s.cycles_per_phase} cycle(s) per phase, {s.dreams_per_cycle} dreams "
                     f"per cycle, {s.facts} facts x {s.heldout_per_fact} held-out question(s) per concept")

    timings: dict[str, float] = {}
    started = time.monotonic()
    base = measure(load_model(arm_config_obj.model, models_dir), probes)
    timings["no_training"] = round(time.monotonic() - started, 1)
    log("start", "no training", f"base model: {brief(base)}")

    def measurer_for(cfg: Config, layout: StateLayout) -> Measurer:
        return Measurer(cfg, layout, probes, base)

    results = {
        "experiment": "memory-formation", "quick": s.quick, "settings": dataclasses.asdict(s),
        "model": model_dir.name, "config": {k: raw[k] for k in ("training", "dreams", "signal", "gate", "evaluation")},
        "phases": [p for p, _ in PHASES], "concepts": list(CONCEPTS),
        "probes": {c: [dataclasses.asdict(p) for p in ps] for c, ps in probes.items()},
        "logs": {c: [str(p.relative_to(out)) for p in paths] for c, paths in logs.items()},
        "started_at": time.time(), "timings": timings, "arms": {},
    }

    started = time.monotonic()
    loop_points, pools = dream_loop_arm(raw, out / "arms" / "dream-loop", logs, measurer_for, base, s, log)
    timings["dream_loop"] = round(time.monotonic() - started, 1)
    results["arms"]["dream_loop"] = loop_points
    _save(out, results)  # a later failure still leaves the first arm's numbers

    started = time.monotonic()
    db = open_store(StateLayout(out / "arms" / "dream-loop").database)
    plain_points = plain_arm(raw, out / "arms" / "plain-finetune", db, pools, loop_points, measurer_for, base, s, log)
    timings["plain_finetune"] = round(time.monotonic() - started, 1)
    results["arms"]["plain_finetune"] = plain_points
    # (c): the same base numbers at every checkpoint, so every table row and plot has all three.
    results["arms"]["no_training"] = [{"index": p["index"], "phase": p["phase"], "cycle": p["cycle"],
                                       "checkpoint": BASE, "steps": 0, "examples": 0, "measurement": base}
                                      for p in loop_points]
    results["budget"] = {phase: {arm: sum(p["steps"] for p in results["arms"][arm] if p["phase"] == phase)
                                 for arm in ARMS} for phase, _ in PHASES}
    timings["total"] = round(log.elapsed, 1)
    written = write_artefacts(results, out)
    _save(out, results)
    log("done", "", f"{timings['total']:.0f} s; artefacts in {out}: " + ", ".join(sorted(p.name for p in written)))
    return results


def _max_node(db) -> int:
    return db.execute("SELECT COALESCE(MAX(id), 0) FROM memory_nodes").fetchone()[0]


def _save(out: Path, results: dict) -> Path:
    path = out / "results.json"
    write_atomically(path, json.dumps(results, indent=1, default=str) + "\n")  # durable: an hour of runs
    return path
