"""Which weights answer: the base model, and the checkpoint `current` names, swapped when it moves.

A watcher thread reads the `current` pointer every `serve.poll_seconds`. When it names another
checkpoint (a promotion, a rollback), that checkpoint is loaded in the background the one way every
stage loads one (`load_as`: verified first, a fresh copy of the base with its weights), and only
then put in place, by one reference assignment: the worker reads the reference at the start of a
batch, so a batch in flight finishes on the weights it started with. A checkpoint that fails to
load leaves the old one serving; the failure is logged and kept for the status, and the same
pointer value is not retried until the pointer moves again.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import structlog

from dreamd.trainers.checkpoints.pointers import BASE, read_pointer
from dreamd.trainers.model_store import LoadedModel

log = structlog.get_logger("dreamd.serve")

SERVED = "dreamd"  # the model name that always means "the current checkpoint"
MODELS = (SERVED, BASE)


@dataclass(frozen=True)
class Version:
    checkpoint: str  # a checkpoint id, or "base"
    loaded: LoadedModel


class Versions:
    def __init__(self, config, layout):
        """Load the base model and the checkpoint `current` names; if that one fails to load,
        `last_good`, and failing that the base (there is no old version to keep at a start)."""
        from dreamd.trainers.model_store import load_model

        self.config, self.layout = config, layout
        self.base = Version(BASE, load_model(config.model, layout.models))
        self.failed: dict[str, str] = {}  # pointer value -> why it could not be loaded
        self.current = (self._load(read_pointer(layout, "current")) or self._load(read_pointer(layout, "last_good"))
                        or self.base)
        self.swaps = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="dreamd-serve-versions", daemon=True)

    def get(self, model: str) -> tuple[str, LoadedModel]:
        version = self.base if model == BASE else self.current
        return version.checkpoint, version.loaded

    def checkpoint_of(self, model: str) -> str:
        return self.base.checkpoint if model == BASE else self.current.checkpoint

    def start(self) -> Versions:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def poll(self) -> bool:
        """Follow the pointer once; True when another version now answers."""
        target = read_pointer(self.layout, "current")
        if target == self.current.checkpoint or target in self.failed:
            if target == self.current.checkpoint:
                self.failed.clear()  # a later move to a checkpoint that failed before tries it again
            return False
        version = self._load(target)
        if version is None:
            return False
        previous, self.current = self.current, version
        self.swaps += 1
        log.info("serve.swapped", checkpoint=version.checkpoint, previous=previous.checkpoint)
        return True

    def _load(self, target: str) -> Version | None:
        if target == BASE:
            return self.base
        from dreamd.trainers.checkpoints.weights import load_as

        try:
            loaded = load_as(self.config.model, self.layout.models, self.layout, target)
        except Exception as exc:  # a corrupt or half-written checkpoint must not stop serving
            self.failed[target] = str(exc)
            log.error("serve.load_failed", checkpoint=target, error=str(exc),
                      serving=getattr(getattr(self, "current", None), "checkpoint", BASE))
            return None
        return Version(target, loaded)  # load_as merged a LoRA adapter: every step costs what the base's does

    def _watch(self) -> None:
        while not self._stop.wait(self.config.serve.poll_seconds):
            try:
                self.poll()
            except Exception:  # the watcher must outlive a bad moment (a disk error)
                log.exception("serve.watch_failed")
