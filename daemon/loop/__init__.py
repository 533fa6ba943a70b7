"""The loop's stages, as the service runs them: passed in as plain callables, so the service never
changes when a stage does, and tests can run the real daemon on scripted fakes
(`dreamd --stages tests.helpers.service_fakes:build`).

- `ingest(config, layout, progress=None) -> dict` runs in the daemon: loop/ingest.py; `progress`
  hears of every file it turns to (the watchdog's view of a stage that hangs).
- `cycle(config_dict, state_root) -> dict` and `reevaluate(config_dict, state_root) -> dict` run
  in a child process (daemon/service/child.py): module-level functions, which spawn pickles by
  reference. The default ones below only import loop/cycle.py once in the child: the daemon holds
  them while idle, and must not import torch for that.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dreamd.daemon.loop.ingest import inbox_ingest

IngestFn = Callable[..., dict[str, Any]]  # (config: Config, layout: StateLayout, progress=None)
ChildJobFn = Callable[[dict[str, Any], str], dict[str, Any]]


@dataclass(frozen=True)
class Stages:
    ingest: IngestFn
    cycle: ChildJobFn
    reevaluate: ChildJobFn | None = None  # None: the re-evaluation job does nothing


def dream_cycle(config: dict[str, Any], state_root: str) -> dict[str, Any]:
    """The dream-cycle job, in the child: loop/cycle.py's run_cycle, its seed left to the clock."""
    from dreamd.daemon.loop.cycle import run_cycle  # the child's import: see the module's docstring

    return run_cycle(config, state_root)


def reevaluate_current(config: dict[str, Any], state_root: str) -> dict[str, Any]:
    """The re-evaluation job, in the child: re-check `current`, rolling back if it fails the gate."""
    from dreamd.daemon.loop.cycle import reevaluate  # the child's import: see the module's docstring

    return reevaluate(config, state_root)


def default_stages() -> Stages:
    return Stages(ingest=inbox_ingest, cycle=dream_cycle, reevaluate=reevaluate_current)
