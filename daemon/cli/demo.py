"""The demo: the real `dreamd` on the bundled sample logs, through one whole cycle, explained.

Each step prints what it did: prepare the model (converting the embedded GGUF on first use),
start `dreamd` on the state dir (or use the one already running there), drop the sample logs (one
per format) into its inbox and follow their ingest, show the memory graph and a few "collisions" —
distant memories joined through the graph, the raw material of dreams — and ask the model a
question whose answer is only in the logs (the dashboard is called Lighthouse), from its weights
alone and with the closest memory in its context. Then ask the daemon for a dream cycle
(`dream_now`, as `dreamctl dream --now` does), follow it to its end (dreams, signal agent, training
round, quality gate), print `dreamctl status`, and stop the daemon with SIGTERM — also on Ctrl-C or
an error, so no daemon is left behind. A daemon that was already running is used and left running.

Did the loop learn? The question is asked from the weights alone (no memory in the context) of
the model the `current` pointer names, as `dreamctl ask` asks it: once before the cycle (usually
the base) and once after (the candidate, if the gate promoted it). The demo prints both answers
and says in one sentence whether the model learned the name from its logs — or that it did not,
and why (the gate's reasons when it rejected the candidate). The model asked before the cycle is
freed before the cycle's child loads its own.

The demo reads the database while the daemon writes it (WAL: readers never block the writer).
"""

from __future__ import annotations

import gc
import hashlib
import os
import tempfile
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from dreamd.daemon.cli.common import answer_alone, model_to_ask
from dreamd.daemon.config import Config, render_config
from dreamd.daemon.service.control import ControlError, DaemonUnavailable, request
from dreamd.daemon.service.process import DreamdProcess
from dreamd.daemon.service.state import control_socket
from dreamd.daemon.service.state_dir import StateLayout

QUESTION = "What is the name of our internal metrics dashboard?"
ANSWER = "Lighthouse"  # what the sample logs call it: an answer that contains it (any case) is right
MAX_NEW_TOKENS = 40
COLLISION_SEED = 7
POLL = 0.5  # seconds between looks at the daemon while waiting
READY_TIMEOUT = 120  # seconds a daemon the demo started gets to answer `ping` out of its start phase
PROGRESS_EVERY = 15.0  # seconds between "still ..." lines
# What the cycle's child logs as it passes each step (in the daemon's stderr), said in words.
STEP_EVENTS = {"dreams scored and stored": "dreams played out and judged by the signal agent",
               "checkpoint written": "training round done: candidate checkpoint written",
               "gate decision": "quality gate decided"}
# What the cycle is busy with after each of those events, for the "still ..." lines.
NEXT_ACTIVITY = {"dreams scored and stored": "training", "checkpoint written": "evaluating the candidate",
                 "gate decision": "promoting or rejecting"}

Say = Callable[[str], None]


class DemoError(RuntimeError):
    """The daemon would not start, died, or never got to the samples."""


def sample_files() -> list[Path]:
    folder = resources.files("dreamd.memory_graph").joinpath("samples")
    return sorted(Path(str(p)) for p in folder.iterdir() if p.name != "README.md" and not p.name.startswith("."))


def run_demo(config: Config, layout: StateLayout, say: Say, dreams: int = 8) -> dict:
    """The whole demo; returns what `dreamctl demo --json` prints."""
    layout.ensure()
    prepare_model(config, layout, say)
    with Daemon(config, layout, say, dreams) as daemon:
        summary = ingest_samples(daemon, config, layout, say)
        explored, memory = explore(config, layout, say)
        summary.update(explored)
        before = ask_before(config, layout, memory, say)
        summary.update(before)
        gc.collect()  # the model just asked is freed before the cycle's child loads its own
        summary["cycle"] = run_one_cycle(daemon, dreams, say) if dreams else None
        summary.update(ask_after(config, layout, before, summary["cycle"], say))
        summary["status"] = show_status(daemon, say)
        summary["daemon"] = {"pid": daemon.pid, "started_by_demo": daemon.started_by_demo}
    if daemon.process is not None:
        summary["daemon"]["exit_code"] = daemon.process.returncode
    return summary


# --- the daemon --------------------------------------------------------------------------------


class Daemon:
    """The dreamd on `layout`: the running one if there is one, else ours, stopped on exit."""

    def __init__(self, config: Config, layout: StateLayout, say: Say, dreams: int):
        self.config, self.layout, self.say, self.dreams = config, layout, say, dreams
        self.socket = control_socket(layout)
        self.process: DreamdProcess | None = None  # set only when the demo started it
        self.pid: int | None = None
        self.log_path = layout.root / "logs" / "demo-dreamd.log"
        self._tmp: tempfile.TemporaryDirectory | None = None

    @property
    def started_by_demo(self) -> bool:
        return self.process is not None

    def __enter__(self) -> Daemon:
        try:
            self.pid = self.ask("ping")["pid"]
            self.say(f"dreamd: already running on {self.layout.root} (pid {self.pid}); using it as it is"
                     + (f" (its own dreams.per_cycle, not --dreams {self.dreams})" if self.dreams else ""))
            return self
        except DaemonUnavailable:
            pass
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _start(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="dreamd-demo-")
        raw = self.config.to_dict()
        if self.dreams:
            raw["dreams"]["per_cycle"] = self.dreams  # --dreams, as a config override for the daemon
        config_file = Path(self._tmp.name) / "dreamd.toml"
        config_file.write_text(render_config(raw), encoding="utf-8")
        # Not under the caller's systemd, if any: this dreamd must not speak for the caller's unit.
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        self.process = DreamdProcess(["--config", str(config_file), "--state-dir", str(self.layout.root)],
                                     self.log_path, env=env).start()
        self.pid = self.process.pid
        deadline = time.monotonic() + READY_TIMEOUT
        while True:  # READY comes after its first inbox scan; the socket answers before
            self.check_alive()
            try:
                if self.ask("ping")["phase"] != "starting":
                    break
            except DaemonUnavailable:
                pass
            if time.monotonic() > deadline:
                raise DemoError(f"dreamd did not get ready in {READY_TIMEOUT} s; its log: {self.log_path}")
            time.sleep(0.2)
        self.say(f"dreamd: started on {self.layout.root} (pid {self.pid}), as `dreamd --state-dir "
                 f"{self.layout.root}` would run; its log lines go to {self.log_path}")

    def ask(self, cmd: str, args: dict | None = None) -> dict[str, Any]:
        return request(self.socket, cmd, args, timeout=10.0)

    def check_alive(self) -> None:
        """DaemonExited if our daemon died; a daemon the demo did not start is not watched."""
        if self.process is not None:
            self.process.check_alive()

    def new_events(self) -> list[str]:
        """Events our daemon (and its cycle's child) logged since the last call."""
        return self.process.new_events() if self.process is not None else []

    def stop(self) -> None:
        """SIGTERM our daemon and wait for it (SIGKILL if it will not go); never the user's."""
        try:
            if self.process is not None and self.process.running():
                self.say("dreamd: stopping it (SIGTERM)")
                code = self.process.stop(timeout=self.config.daemon.stop_timeout_seconds + 15)
                self.say(f"dreamd: stopped (exit code {code})")
        finally:
            if self._tmp is not None:
                self._tmp.cleanup()
                self._tmp = None


# --- the steps ---------------------------------------------------------------------------------


def prepare_model(config: Config, layout: StateLayout, say: Say) -> None:
    """Load the configured model once (converting the embedded GGUF on first use) before dreamd needs it."""
    from dreamd.trainers.model_store import load_model

    started = time.monotonic()
    loaded = load_model(config.model, layout.models)
    say(f"model: {loaded.directory.name} loaded from {loaded.directory} in {time.monotonic() - started:.1f} s "
        f"on {loaded.model.device}")


def ingest_samples(daemon: Daemon, config: Config, layout: StateLayout, say: Say) -> dict:
    """Drop the sample logs the safe way, wait for the daemon to ingest them, say what it made."""
    from dreamd.memory_graph.database.store import open_store
    from dreamd.memory_graph.inbox import Inbox

    db = open_store(layout.database)
    files = sample_files()
    hashes = {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in files}
    known = {sha: name for sha, name in db.execute("SELECT sha256, name FROM sources").fetchall()}
    inbox = Inbox(layout.inbox, config.inbox)
    dropped = {path.name: inbox.drop(path).name for path in files}
    say(f"inbox: dropped {len(files)} sample logs into {inbox.new} (copied into tmp/, renamed into new/); "
        "dreamd notices them within daemon.inbox_poll_seconds")
    waiting, last, started = set(dropped.values()), None, time.monotonic()
    while waiting:
        daemon.check_alive()
        present = {p.name for folder in ("new", "processing") for p in layout.inbox_folder(folder).iterdir()}
        waiting &= present
        messages = db.execute("SELECT count(*) FROM messages").fetchone()[0]
        now = (len(files) - len(waiting), messages)
        if now != last:
            say(f"  ingesting: {now[0]} of {len(files)} files done, {messages} messages in the graph")
            last = now
        if time.monotonic() - started > 600:
            raise DemoError(f"dreamd did not ingest the samples in 10 minutes; still waiting: {sorted(waiting)}")
        time.sleep(0.2 if waiting else 0)
    summary = {"files": len(files), "ingested": 0, "duplicates": 0, "quarantined": 0, "messages": 0}
    for source in files:
        sha = hashes[source.name]
        row = db.execute("SELECT id, format, messages, duplicate_messages, skipped FROM sources WHERE sha256 = ?",
                         (sha,)).fetchone()
        if sha in known:
            summary["duplicates"] += 1
            say(f"  {source.name}: already ingested (as {known[sha]}): nothing new")
        elif row is None:
            summary["quarantined"] += 1
            say(f"  {source.name}: quarantined (see {layout.inbox_folder('quarantine')})")
        else:
            source_id, fmt, messages, duplicates, skipped = row
            nodes = db.execute("SELECT count(*) FROM memory_nodes n JOIN messages m ON m.id = n.first_message_id "
                               "WHERE m.source_id = ?", (source_id,)).fetchone()[0]
            summary["ingested"] += 1
            summary["messages"] += messages
            say(f"  {source.name}: {fmt}, {messages} new messages, {nodes} memories, {duplicates} already known, "
                f"{skipped} malformed records skipped")
    db.conn.close()
    return summary


def explore(config: Config, layout: StateLayout, say: Say) -> tuple[dict, str | None]:
    """The graph the daemon built, a few collisions, and the memory closest to the question (None
    when there are no memories)."""
    from dreamd.memory_graph.database.store import open_store
    from dreamd.memory_graph.embedder import Embedder
    from dreamd.memory_graph.graph import MemoryGraph

    db = open_store(layout.database)
    graph = MemoryGraph.load(db)
    stats = graph.stats()
    say(f"memory graph: {stats['nodes']} memories (user→assistant exchanges), {stats['edges']} edges "
        f"{stats['edge_kinds']}")
    collisions = graph.collisions(db, 3, seed=COLLISION_SEED, settings=config.graph)
    for collision in collisions:
        say(f"collision of {len(collision.node_ids)} memories {collision.node_ids}:")
        for node_id, text in zip(collision.node_ids, collision.texts):
            say(f"  [{node_id}] {_short(text)!r}")
        for path in collision.paths:
            say(f"  joined by {' → '.join(map(str, path))}")

    summary = {"memories": stats["nodes"], "edges": stats["edges"],
               "collisions": [{"node_ids": c.node_ids, "paths": c.paths} for c in collisions]}
    memory = None
    if stats["nodes"]:
        scores = graph.vectors @ Embedder(config.embedder).encode([QUESTION])[0]
        node_id = int(graph.ids[int(np.argmax(scores))])
        memory = db.execute("SELECT text FROM memory_nodes WHERE id = ?", (node_id,)).fetchone()[0]
    db.conn.close()
    return summary, memory


def ask_before(config: Config, layout: StateLayout, memory: str | None, say: Say) -> dict:
    """The question, before the cycle, to the model `current` names (usually still the base): from
    its weights alone, as `dreamctl ask` asks, and with the closest memory in its context."""
    from dreamd.trainers.generate import chat_reply

    checkpoint, loaded = model_to_ask(config, layout)
    plain = answer_alone(loaded, QUESTION, MAX_NEW_TOKENS)
    say(f"ask: {QUESTION}")
    say(f"  from its weights alone ({checkpoint}): {plain}")
    asked = {"question": QUESTION, "answer_before": plain, "answer_before_checkpoint": checkpoint,
             "answer_without_memory": plain}
    if memory is None:
        say("  with a memory in context: skipped (no memories to recall)")
        return asked
    recalled = chat_reply(loaded, [
        {"role": "system", "content": f"Answer using this note from earlier conversations: {memory}"},
        {"role": "user", "content": QUESTION},
    ], max_new_tokens=MAX_NEW_TOKENS)
    say(f"  closest memory: {_short(memory, 90)!r}")
    say(f"  with the memory in context: {recalled}")
    return {**asked, "answer_with_memory": recalled}


def ask_after(config: Config, layout: StateLayout, before: dict, cycle: dict | None, say: Say) -> dict:
    """The question again, after the cycle, from the weights alone of the model `current` names
    now; print both answers and whether the model learned the answer from its logs."""
    checkpoint, loaded = model_to_ask(config, layout)
    answer = answer_alone(loaded, QUESTION, MAX_NEW_TOKENS)
    del loaded
    gc.collect()
    after = {"answer_after": answer, "answer_after_checkpoint": checkpoint}
    learned, verdict = learning_verdict(before, after, cycle)
    for line in learning_lines(before, after, verdict):
        say(line)
    return {**after, "learned": learned}


def learning_lines(before: dict, after: dict, verdict: str) -> list[str]:
    """What the demo prints on whether the loop learned: the question, both answers, the verdict."""
    return [f"did it learn? {QUESTION}",
            f"  Before the cycle (weights alone, {before['answer_before_checkpoint']}): {before['answer_before']}",
            f"  After the cycle (weights alone, {after['answer_after_checkpoint']}): {after['answer_after']}",
            f"  {verdict}"]


def learning_verdict(before: dict, after: dict, cycle: dict | None) -> tuple[bool, str]:
    """Whether the weights alone now answer with the name only the logs give, and one plain
    sentence that says so (or why not)."""
    if ANSWER.lower() in after["answer_after"].lower():
        already = ANSWER.lower() in before["answer_before"].lower()
        return True, (f"The model learned it from its logs: from its weights alone, with no memory in its context, "
                      f"{after['answer_after_checkpoint']} answers with {ANSWER}"
                      + (" (it already did before this cycle)." if already else "."))
    return False, f"The model did not learn it in this demo: {why_not_learned(cycle)}."


def why_not_learned(cycle: dict | None) -> str:
    """Why the answer is still not in the weights, from the cycle's summary (run_one_cycle's)."""
    if cycle is None:
        return "no dream cycle ran"
    steps = cycle.get("steps") or {}
    gate = steps.get("gate")
    if gate is None:
        if cycle.get("status") != "ok":
            return f"the dream cycle {cycle.get('status')} before the quality gate ({cycle.get('error')})"
        return f"the cycle trained no candidate ({cycle.get('outcome')})"
    if gate["decision"] == "promoted":
        return f"the candidate {gate['checkpoint']} was promoted, but its weights alone still do not answer {ANSWER}"
    return (f"the quality gate rejected the candidate {gate['checkpoint']} ("
            + "; ".join(gate.get("reasons") or ["no reason given"]) + "), so `current` did not move")


def run_one_cycle(daemon: Daemon, dreams: int, say: Say) -> dict | None:
    """Ask the daemon for a cycle, follow it to its end, and say what each step did."""
    before = (daemon.ask("status").get("last_cycle") or {}).get("started")
    try:
        answer = daemon.ask("dream_now")
    except ControlError as exc:
        say(f"dream cycle: not started: {exc.message}")
        return None
    say(f"dream cycle: {'already running; following it' if answer.get('already_running') else 'started'} "
        f"(dreamctl dream --now): {dreams if daemon.started_by_demo else 'its configured number of'} dreams "
        "-> signal agent -> training round -> quality gate (a few minutes on two CPU cores)")
    started, said, activity = time.monotonic(), time.monotonic(), "dreaming"
    daemon.new_events()  # only what the cycle logs from here on
    while True:
        daemon.check_alive()
        status = daemon.ask("status")
        cycle = status.get("last_cycle") or {}
        if cycle.get("job") == "dream-cycle" and cycle.get("started") != before and status["phase"] != "dreaming":
            break
        elapsed = time.monotonic() - started
        for event in daemon.new_events():
            if event in STEP_EVENTS:
                say(f"  {STEP_EVENTS[event]} ({elapsed:.0f} s)")
                said, activity = time.monotonic(), NEXT_ACTIVITY[event]
        if time.monotonic() - said >= PROGRESS_EVERY:
            say(f"  still {activity} ({elapsed:.0f} s)")
            said = time.monotonic()
        time.sleep(POLL)
    result = cycle.get("result") or {}
    steps = result.get("steps", {})
    if cycle.get("status") != "ok":
        say(f"  the cycle {cycle.get('status')}: {cycle.get('error')}")
    made = steps.get("dreams", {})
    if made:
        say(f"  dreams: {made.get('dreams', 0)} played out, {made.get('accepted', 0)} accepted by the signal agent"
            + (f"; rejected for {made['rejections']}" if made.get("rejections") else ""))
    if "candidate" in steps.get("training", {}):  # not when there was nothing to train on
        t = steps["training"]
        say(f"  training: {t['examples']} examples ({t['dream_examples']} dreams) from {t['parent']} -> "
            f"candidate {t['candidate']}, loss {t['first_loss']:.3f} -> {t['last_loss']:.3f}")
    if "gate" in steps:
        g = steps["gate"]
        say(f"  quality gate: {g['decision']} against {g['compared_to']} (evaluated in {g['eval_seconds']:.0f} s)"
            + "".join(f"\n    {reason}" for reason in g["reasons"]))
    say(f"  outcome: {result.get('outcome') or cycle.get('error')} in {time.monotonic() - started:.0f} s")
    after = daemon.ask("status")
    return {"status": cycle.get("status"), "outcome": result.get("outcome"), "error": cycle.get("error"),
            "steps": steps, "current": after["current"], "last_good": after["last_good"]}


def show_status(daemon: Daemon, say: Say) -> dict:
    """`dreamctl status`, as the daemon answers it."""
    from dreamd.daemon.cli.service import _status_rows, table_lines

    status = {**daemon.ask("status"), "source": "daemon"}
    say("dreamctl status:")
    for line in table_lines(_status_rows(status)):
        say(f"  {line}")
    return status


def _short(text: str, limit: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
