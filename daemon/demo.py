"""The demo job: as much of the dream loop as exists, run on the bundled sample logs.

Each step prints what it did. Today: prepare the embedded model (converting it on first use),
drop the bundled sample logs (one per format) into the inbox, ingest them the way the daemon does
(parse, store, embed, link into the memory graph), draw a few "collisions" — distant memories
joined through the graph, the raw material of dreams — and ask the model a question whose answer
is only in the logs, with and without the closest memory in its context; then run one whole dream
cycle (dreams, signal agent, training round, quality gate) and show the status.
"""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path
from typing import Callable

import numpy as np

from dreamd.daemon.config import Config
from dreamd.daemon.state_dir import StateLayout
from dreamd.memory_graph.embedder import Embedder
from dreamd.memory_graph.ingest import Ingester
from dreamd.trainers.generate import chat_reply
from dreamd.trainers.model_store import load_model

QUESTION = "What is the name of our internal metrics dashboard?"
COLLISION_SEED = 7


def sample_files() -> list[Path]:
    folder = resources.files("dreamd.memory_graph").joinpath("samples")
    return sorted(Path(str(p)) for p in folder.iterdir() if p.name != "README.md" and not p.name.startswith("."))


def run_demo(config: Config, layout: StateLayout, say: Callable[[str], None], dreams: int = 8) -> dict:
    layout.ensure()
    started = time.monotonic()
    loaded = load_model(config.model, layout.models)
    say(f"model: {loaded.directory.name} loaded from {loaded.directory} in {time.monotonic() - started:.1f} s "
        f"on {loaded.model.device}")

    embedder = Embedder(config.embedder)
    ingester = Ingester(layout, embedder, config.inbox, config.graph)
    files = sample_files()
    dropped = {ingester.inbox.drop(path).name for path in files}
    say(f"inbox: dropped {len(files)} sample logs into {ingester.inbox.new} (tmp/ then rename)")
    report = ingester.drain(trusted=frozenset(dropped))
    for outcome in report.outcomes:
        if outcome["status"] == "ingested":
            say(f"  {outcome['file']}: {outcome['format']}, {outcome['messages']} new messages, "
                f"{outcome['nodes']} memories, {outcome['duplicate_messages']} already known, "
                f"{outcome['skipped_records']} malformed records skipped")
        else:
            say(f"  {outcome['file']}: {outcome['status']} ({outcome.get('same_as') or outcome.get('reason')})")
    stats = ingester.graph.stats()
    say(f"memory graph: {stats['nodes']} memories (user→assistant exchanges), {stats['edges']} edges "
        f"{stats['edge_kinds']}; ingest took {report.seconds:.2f} s")

    collisions = ingester.graph.collisions(ingester.db, 3, seed=COLLISION_SEED, settings=config.graph)
    for collision in collisions:
        say(f"collision of {len(collision.node_ids)} memories {collision.node_ids}:")
        for node_id, text in zip(collision.node_ids, collision.texts):
            say(f"  [{node_id}] {_short(text)!r}")
        for path in collision.paths:
            say(f"  joined by {' → '.join(map(str, path))}")

    memory = _best_memory_for(QUESTION, ingester, embedder)
    plain = chat_reply(loaded, [{"role": "user", "content": QUESTION}], max_new_tokens=40)
    recalled = chat_reply(
        loaded,
        [
            {"role": "system", "content": f"Answer using this note from earlier conversations: {memory}"},
            {"role": "user", "content": QUESTION},
        ],
        max_new_tokens=40,
    )
    say(f"ask: {QUESTION}")
    say(f"  closest memory: {_short(memory, 90)!r}")
    say(f"  from its weights alone: {plain}")
    say(f"  with the memory in context: {recalled}")
    cycle = run_one_cycle(config, layout, dreams, say) if dreams else None
    return {
        "model_dir": str(loaded.directory),
        "files": report.files,
        "ingested": report.ingested,
        "duplicates": report.duplicates,
        "messages": report.messages,
        "memories": stats["nodes"],
        "edges": stats["edges"],
        "collisions": [{"node_ids": c.node_ids, "paths": c.paths} for c in collisions],
        "answer_without_memory": plain,
        "answer_with_memory": recalled,
        "cycle": cycle,
    }


def run_one_cycle(config: Config, layout: StateLayout, dreams: int, say: Callable[[str], None]) -> dict:
    """One dream cycle, the steps the daemon runs (here in this process), then the status."""
    from dreamd.daemon.stages import run_cycle
    from dreamd.daemon.status import collect_status

    say(f"dream cycle: {dreams} dreams -> signal agent -> training round -> quality gate "
        "(a few minutes on two CPU cores)")
    raw = config.to_dict()
    raw["dreams"]["per_cycle"] = dreams
    started = time.monotonic()
    result = run_cycle(raw, str(layout.root))
    steps = result.get("steps", {})
    made = steps.get("dreams", {})
    if made:
        say(f"  dreams: {made.get('dreams', 0)} played out, {made.get('accepted', 0)} accepted by the signal agent"
            + (f"; rejected for {made['rejections']}" if made.get("rejections") else ""))
    if "training" in steps:
        t = steps["training"]
        say(f"  training: {t['examples']} examples ({t['dream_examples']} dreams) from {t['parent']} -> "
            f"candidate {t['candidate']}, loss {t['first_loss']:.3f} -> {t['last_loss']:.3f}")
    if "gate" in steps:
        g = steps["gate"]
        say(f"  quality gate: {g['decision']} against {g['compared_to']} (evaluated in {g['eval_seconds']:.0f} s)"
            + "".join(f"\n    {reason}" for reason in g["reasons"]))
    say(f"  outcome: {result.get('outcome')} in {time.monotonic() - started:.0f} s")
    status = collect_status(layout)
    say(f"status: current {status['current'] or 'base'}, last_good {status['last_good'] or 'base'}; "
        f"{status['graph']['nodes']} memories, {status['dreams']['generated']} dreams "
        f"({status['dreams']['accepted']} accepted), {status['training_rounds']} training rounds")
    return {"outcome": result.get("outcome"), "steps": steps, "current": status["current"],
            "last_good": status["last_good"]}


def _best_memory_for(question: str, ingester: Ingester, embedder: Embedder) -> str:
    graph = ingester.graph
    scores = graph.vectors @ embedder.encode([question])[0]
    node_id = graph.ids[int(np.argmax(scores))]
    return ingester.db.execute("SELECT text FROM memory_nodes WHERE id = ?", (node_id,)).fetchone()[0]


def _short(text: str, limit: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
