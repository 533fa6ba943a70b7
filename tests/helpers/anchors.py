"""The default model's answers to the anchor bank, shared by the tests that run real cycles.

A state dir answers the bank once, on its first cycle (about a minute and a half on two cores for
the default model): the daemon keeps the answers in `<state>/models`. Every test starts from a
new state dir, so the suite would pay that minute in each; instead the session answers it once
(`default_anchor_cache` in conftest) and `share_anchors` puts the file where that state dir's
first cycle looks for it, as if an earlier cycle had written it.
"""

from __future__ import annotations

import shutil
from pathlib import Path


def share_anchors(cache: Path, state_dir: Path) -> None:
    Path(state_dir).mkdir(parents=True, exist_ok=True, mode=0o700)  # as the daemon makes it: private
    models = Path(state_dir) / "models"
    models.mkdir(exist_ok=True, mode=0o700)
    shutil.copy2(cache, models / cache.name)
