"""Benchmark: end-to-end ingest against embedding alone, same texts, same embedder, same run.

Synthetic chat (≥ 2,000 messages in OpenAI JSONL files) is dropped into a fresh inbox; the timed
part is the ingester draining it (claim, parse, dedupe, embed, commit rows, embeddings and edges,
move to done/, update the graph view). The baseline batch-encodes exactly the texts the ingester
embeds (its exchange nodes) with the same real all-MiniLM-L6-v2. Both are run twice, alternating,
and the faster of each is kept (the machine is shared). ratio = ingest msgs/s ÷ embed-only msgs/s.

    .venv/bin/python tests/bench/bench_ingest.py --json
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

TOPICS = {
    "deploys": ["the release branch", "the Tuesday deploy window", "a failed rollout", "the canary pods"],
    "databases": ["connection pools", "a slow migration", "replication lag", "the staging database"],
    "queues": ["the ingest workers", "a stuck batch", "the oldest message age", "retry with backoff"],
    "gardening": ["balcony tomatoes", "basil on the windowsill", "yellow leaves", "watering in the morning"],
    "cooking": ["leftover rice", "a sourdough starter", "knife skills", "a quick weeknight pasta"],
    "travel": ["a night train to Vienna", "carry-on luggage rules", "jet lag", "a rainy day in Lisbon"],
}
ASKS = ["What should I check about {x}?", "Can you explain {x} in simple terms?", "We had trouble with {x} again, why?",
        "Is there a better way to handle {x}?", "Summarise what we decided about {x} last week."]
ANSWERS = ["Start with {x}: look at what changed most recently, then compare it with a day that went well.",
           "In short, {x} depends on timing; write down the steps, keep them small, and measure before and after.",
           "The usual cause with {x} is doing too much at once. Split the work and watch the first part closely.",
           "Keep {x} boring: a checklist, one owner, and a note of what to do when it goes wrong."]


def synthetic_files(folder: Path, messages: int, per_file: int, seed: int = 0) -> list[Path]:
    rng = random.Random(seed)
    files, written = [], 0
    while written < messages:
        lines = []
        for _ in range(per_file // 4):
            topic = rng.choice(list(TOPICS))
            chat = []
            for _ in range(2):
                x = rng.choice(TOPICS[topic])
                chat += [{"role": "user",
                          "content": rng.choice(ASKS).format(x=x) + f" (ticket {rng.randint(100, 99999)})"},
                         {"role": "assistant", "content": rng.choice(ANSWERS).format(x=x)}]
            lines.append(json.dumps({"messages": chat}))
            written += 4
        path = folder / f"chats-{len(files):03d}.jsonl"
        path.write_text("\n".join(lines) + "\n")
        files.append(path)
    return files


def node_texts(files: list[Path]) -> list[str]:
    from dreamd.memory_graph.formats.parse import parse_bytes
    from dreamd.memory_graph.memories import plan_conversations, plan_nodes

    texts = []
    for path in files:
        conversations = plan_conversations(parse_bytes(path.read_bytes()))
        texts += [n.text for n in plan_nodes([c.messages for c in conversations])]
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument("--messages", type=int, default=2400)
    parser.add_argument("--per-file", type=int, default=100)
    args = parser.parse_args()

    from dreamd.daemon.service.logs import configure_logging
    from dreamd.daemon.service.state_dir import StateLayout
    from dreamd.memory_graph.embedder import Embedder
    from dreamd.memory_graph.ingest import Ingester
    from dreamd.memory_graph.settings import EmbedderSettings, GraphSettings, InboxSettings

    configure_logging("console", "warning")
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        (work / "src").mkdir()
        files = synthetic_files(work / "src", args.messages, args.per_file)
        texts = node_texts(files)
        embedder = Embedder(EmbedderSettings())
        embedder.encode(texts[:64])  # warm-up: first-call allocations are not what is measured
        embed_best = ingest_best = float("inf")
        for round_ in range(2):
            started = time.perf_counter()
            embedder.encode(texts)
            embed_best = min(embed_best, time.perf_counter() - started)

            layout = StateLayout(work / f"state{round_}").ensure()
            inbox = InboxSettings(stable_seconds=0.0)
            for path in files:
                shutil.copy2(path, layout.inbox_folder("new") / path.name)
            started = time.perf_counter()
            ingester = Ingester(layout.inbox, layout.database, embedder, inbox, GraphSettings())
            report = ingester.drain()
            ingest_best = min(ingest_best, time.perf_counter() - started)
            assert report.messages == args.messages // 4 * 4 and report.ingested == len(files), report.to_dict()
            ingester.db.close()
        messages = report.messages
        result = {
            "msgs_per_s": round(messages / ingest_best, 1),
            "embed_only_msgs_per_s": round(messages / embed_best, 1),
            "ratio": round(embed_best / ingest_best, 3),
        }
        if args.json:
            print(json.dumps(result))
        else:
            print(f"{messages} messages in {len(files)} files, {len(texts)} exchange nodes embedded")
            print(f"ingest end to end: {ingest_best:.2f} s  ({result['msgs_per_s']} msgs/s)")
            print(f"embedding only:    {embed_best:.2f} s  ({result['embed_only_msgs_per_s']} msgs/s)")
            print(f"ratio {result['ratio']} (goal >= 0.85)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
