"""The one generation worker: requests wait in a bounded queue, and those that arrive together are
answered together, in one batch; those that arrive while it runs join it between two steps.

One worker, not one thread per request: the model runs on a few cores (or one GPU), and a batch
of eight costs little more per step than one row, while eight threads would only fight over the
same cores. The worker waits `batch_wait_ms` after a request arrives for others to join it, takes
up to `max_batch` asking for the same model, and asks `Versions` for that model at the start of
the batch: a swap between batches never reaches a batch in flight (newcomers join a running
batch only while it still runs the current version). Each request hears its end as soon as its own
row ends, not when the whole batch does.

The bound is on everything admitted (waiting plus being answered): one request more is refused at
once (the API turns `Overloaded` into a 429), so memory and latency stay bounded under any load.
Events go back to each request through its `send` callback, called on the worker thread.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from dreamd.trainers.decoder import Row, decode_batch

log = structlog.get_logger("dreamd.serve")


class Overloaded(Exception):
    """The queue is full: the request is refused, not queued."""


@dataclass(eq=False)  # hashed by identity: the engine keeps a set of them
class Job:
    """One admitted request: the model it asked for, its row, and where its events go.

    Events: ("start", checkpoint_id), ("delta", text), ("end", finish_reason), ("error", message)."""

    model: str
    row: Row
    send: Callable[[tuple[str, Any]], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    checkpoint: str | None = None


class Engine:
    def __init__(self, versions, max_queue: int, max_batch: int, batch_wait_ms: float):
        """`versions.get(model)` gives (checkpoint id, LoadedModel) for a model name at batch start."""
        self.versions = versions
        self.max_queue, self.max_batch, self.batch_wait = max_queue, max_batch, batch_wait_ms / 1000
        self._waiting: deque[Job] = deque()
        self._jobs: set[Job] = set()  # admitted and not finished (the bound counts these)
        self._lock = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="dreamd-serve-worker", daemon=True)

    def start(self) -> Engine:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Take nothing more; rows still generating (their clients gone with the server) end at
        their next step."""
        with self._lock:
            self._stopping = True
            for job in self._jobs:
                job.cancelled.set()
            self._lock.notify_all()
        self._thread.join(timeout)

    @property
    def admitted(self) -> int:
        """Requests waiting or being answered now."""
        return len(self._jobs)

    def submit(self, job: Job) -> None:
        """Queue a job, or raise Overloaded when `max_queue` are in already."""
        job.row.cancelled = job.cancelled.is_set
        with self._lock:
            if self._stopping:
                raise Overloaded("the server is stopping")
            if len(self._jobs) >= self.max_queue:
                raise Overloaded(f"{len(self._jobs)} requests are in the queue already (serve.max_queue)")
            self._jobs.add(job)
            self._waiting.append(job)
            self._lock.notify_all()

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._answer(batch)

    def _next_batch(self) -> list[Job] | None:
        with self._lock:
            while not self._waiting:
                if self._stopping:
                    return None
                self._lock.wait()
            # Others arriving within batch_wait join this batch (a full batch goes at once).
            deadline = time.monotonic() + self.batch_wait
            while len(self._waiting) < self.max_batch and not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._lock.wait(left)
            return self._take(self._waiting[0].model, self.max_batch)

    def _take(self, model: str, count: int) -> list[Job]:
        """Up to `count` waiting jobs for `model`, oldest first (the lock is held)."""
        taken = [job for job in self._waiting if job.model == model][:count]
        for job in taken:
            self._waiting.remove(job)
        return taken

    def _answer(self, batch: list[Job]) -> None:
        model = batch[0].model
        try:
            checkpoint, loaded = self.versions.get(model)
        except Exception as exc:  # every request must hear why
            log.exception("serve.model_unavailable", model=model)
            for job in batch:
                self._finish(job, ("error", f"model {model} is not available: {exc}"))
            return
        running: list[Job] = []

        def begin(jobs: list[Job]) -> list[Row]:
            rows = []
            for job in jobs:
                if job.cancelled.is_set():
                    self._finish(job, ("end", "cancelled"))
                    continue
                job.checkpoint = checkpoint
                job.row.on_delta = lambda text, job=job: job.send(("delta", text))
                job.row.on_finish = lambda finish, job=job: self._finish(job, ("end", finish))
                job.send(("start", checkpoint))
                running.append(job)
                rows.append(job.row)
            return rows

        def admit(room: int) -> list[Row]:
            # Newcomers join only while they would get the same version: after a swap the batch
            # drains, and they start the next one on the new weights.
            if self.versions.checkpoint_of(model) != checkpoint:
                return []
            with self._lock:
                if self._stopping:
                    return []
                joining = self._take(model, room)
            return begin(joining)

        rows = begin(batch)
        if not rows:
            return
        started = time.monotonic()
        try:
            decode_batch(loaded, rows, admit=admit, max_rows=self.max_batch)
        except Exception as exc:  # a failed batch fails its requests, not the worker
            log.exception("serve.generation_failed", rows=len(running))
            for job in running:
                if job.row.finish is None:
                    self._finish(job, ("error", f"generation failed: {exc}"))
            return
        log.debug("serve.batch", rows=len(running), checkpoint=checkpoint,
                  tokens=sum(len(job.row.tokens) for job in running), seconds=round(time.monotonic() - started, 3))

    def _finish(self, job: Job, event: tuple[str, Any]) -> None:
        job.send(event)
        with self._lock:
            self._jobs.discard(job)
