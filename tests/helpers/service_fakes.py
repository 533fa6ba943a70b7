"""Scripted stages for running the real dreamd in tests (`dreamd --stages tests.helpers.service_fakes:build`).

The cycle runs in dreamd's child process like a real one; how long it takes comes from
$DREAMD_FAKE_CYCLE_SECONDS, so a test can stop the daemon in the middle of one.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from dreamd.daemon.loop import Stages


def build() -> Stages:
    return Stages(ingest=ingest, cycle=cycle, reevaluate=None)


def ingest(config, layout, progress=None) -> dict:
    """Move every file from new/ to done/ by rename; one message per line. A file whose name starts
    with `hang` hangs the ingest for $DREAMD_FAKE_HANG_SECONDS (a stage that stopped progressing)."""
    messages = files = 0
    for path in sorted(layout.inbox_folder("new").iterdir()):
        if progress is not None:
            progress.working_on(path.name)
        if path.name.startswith("hang"):
            time.sleep(float(os.environ.get("DREAMD_FAKE_HANG_SECONDS", "60")))
        messages += len(path.read_text(encoding="utf-8").splitlines())
        path.rename(layout.inbox_folder("done") / path.name)
        files += 1
    return {"files": files, "messages": messages}


def cycle(config: dict, state_root: str) -> dict:
    seconds = float(os.environ.get("DREAMD_FAKE_CYCLE_SECONDS", "0.2"))
    marker = Path(state_root) / "fake-cycles.log"
    with open(marker, "a") as handle:
        handle.write(f"start {os.getpid()}\n")
    time.sleep(seconds)
    with open(marker, "a") as handle:
        handle.write(f"done {os.getpid()}\n")
    return {"outcome": "promoted", "gate": {"decision": "promote", "reasons": ["fake"]}}
