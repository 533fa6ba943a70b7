"""The stages the service runs, passed in as callables so the service itself never changes when a
stage lands, and so tests can run the real daemon on scripted fakes.

- `ingest(config, layout) -> dict` runs in the daemon (a scheduler thread): memory_graph's
  Ingester, kept warm between scans (its embedder loaded once). It is
  called only when `inbox/new/` or `inbox/processing/` holds something, so an idle daemon never
  loads torch. The result may carry `messages` (new messages ingested): that count can start a
  dream cycle early.
- `cycle` and `reevaluate` name "module:function" targets run in a child process (see child.py),
  called as `f(config_dict, state_root) -> dict`.

The dream cycle is a fixed sequence of steps (collision sampling -> dreams -> signal agent ->
training round -> gate -> promote or reject), named in CYCLE_STEPS and written in cycle.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from dreamd.daemon.service.child import resolve
from dreamd.daemon.config import Config
from dreamd.daemon.service.state_dir import StateLayout

IngestFn = Callable[[Config, StateLayout], dict[str, Any]]

# Each step: (name, "module:function"). A step function takes the cycle context (config, state_root
# and every earlier step's result, by name) and returns a dict; {"stop": true, "outcome": ...} ends
# the cycle early (e.g. no dream accepted). daemon/cycle.py says what each does. A step named with
# None (while a stage is being written) makes the cycle report `skipped` instead of pretending.
CYCLE_STEPS: tuple[tuple[str, str | None], ...] = (
    ("dreams", "dreamd.daemon.loop.cycle:dreams"),        # collisions -> dreams -> signal agent, stored
    ("training", "dreamd.daemon.loop.cycle:training"),    # one context-frozen APOLLO round -> a candidate
    ("gate", "dreamd.daemon.loop.cycle:gate"),            # evaluate the candidate, decide
    ("promote", "dreamd.daemon.loop.cycle:promote"),      # move current/last_good, or record the rejection
)
REEVALUATE_TARGET: str | None = "dreamd.daemon.loop.cycle:reevaluate"  # re-check current, roll back if bad


@dataclass
class Stages:
    ingest: IngestFn
    cycle: str = "dreamd.daemon.loop.stages:run_cycle"
    reevaluate: str | None = REEVALUATE_TARGET


def run_cycle(config: dict[str, Any], state_root: str, steps=CYCLE_STEPS, seed: int | None = None) -> dict[str, Any]:
    """One dream cycle, in the child process. Returns its outcome and each step's result.
    `seed` fixes the cycle's seed (collisions, generation, replay) so a run repeats; the daemon
    leaves it to the clock."""
    missing = [name for name, target in steps if target is None]
    if missing:
        return {"outcome": "skipped", "reason": "stages not wired yet: " + ", ".join(missing),
                "not_wired": missing}
    context: dict[str, Any] = {"config": config, "state_root": state_root}
    if seed is not None:
        context["seed"] = seed
    for name, target in steps:
        result = resolve(target)(context) or {}
        context[name] = result
        if result.get("stop"):
            return {"outcome": result.get("outcome", "stopped"), "stopped_at": name,
                    "steps": {n: context[n] for n, _ in steps if n in context}}
    return {"outcome": context["promote"].get("outcome", "done"), "gate": context["gate"],
            "steps": {n: context[n] for n, _ in steps}}


_ingesters: dict[tuple, Any] = {}  # one warm Ingester (embedder loaded) per settings in force


def inbox_ingest(config: Config, layout: StateLayout) -> dict[str, Any]:
    """memory_graph's Ingester.drain(): crash leftovers in processing/ first, then new/.

    The Ingester (and its embedder, which imports torch) is built on the first scan that finds
    files, then kept warm; a reload that changes the embedder, inbox or graph settings builds a
    new one.
    """
    from dreamd.memory_graph.embedder import Embedder
    from dreamd.memory_graph.ingest import Ingester

    key = (str(layout.root), repr(config.embedder), repr(config.inbox), repr(config.graph))
    ingester = _ingesters.get(key)
    if ingester is None:
        for old in _ingesters.values():
            old.db.conn.close()
        _ingesters.clear()
        ingester = _ingesters[key] = Ingester(layout, Embedder(config.embedder), config.inbox, config.graph)
    report = ingester.drain()
    return {k: v for k, v in report.to_dict().items() if k != "outcomes"}  # outcomes: in the log


def default_stages() -> Stages:
    return Stages(ingest=inbox_ingest)


def load_stages(spec: str | None) -> Stages:
    """The default stages, or `module:factory` returning a Stages (tests, experiments)."""
    if not spec:
        return default_stages()
    stages = resolve(spec)()
    if not isinstance(stages, Stages):
        raise TypeError(f"{spec} returned {type(stages).__name__}, not Stages")
    return stages
