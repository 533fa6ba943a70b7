"""Benchmark: dreams generated batched against one at a time, on the default model, in one run.

The bundled sample logs are ingested (real embedder) into a throwaway state dir and 16 collisions
drawn once. The same 16 dreams (same collisions, prompts, temperatures and seeds) are then
composed and played out twice: in batches of 16 (left padding, attention masks) and one at a
time (batch size 1). Tokens counted are the generated tokens of scenarios and responses, padding
excluded; the time is the wall time of all generation, prompt processing included. The signal
agent then scores the batched dreams; accept_rate is the share it accepts. Sampling at the
configured temperatures means the two runs' texts (and token counts, both printed) can differ.

    .venv/bin/python tests/bench/bench_dream.py --json
"""

from __future__ import annotations

import argparse
import atexit
import json
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument("--dreams", type=int, default=16)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--models-dir", type=Path, default=None, help="default: <state>/models")
    args = parser.parse_args()

    import torch

    from dreamd.daemon.dreaming.dreams import dream
    from dreamd.daemon.dreaming.settings import DreamSettings, SignalSettings
    from dreamd.daemon.dreaming.signal_agent import ScoringContext, score_dreams
    from dreamd.daemon.service.state_dir import StateLayout, resolve_state_dir
    from dreamd.memory_graph.embedder import Embedder
    from dreamd.memory_graph.settings import EmbedderSettings, GraphSettings
    from dreamd.trainers.generate import generate_chats
    from dreamd.trainers.model_store import load_model
    from dreamd.trainers.settings import ModelSettings

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from dreamd.daemon.service.logs import configure_logging
    from tests.helpers.dreams import sample_graph

    configure_logging("console", "warning")  # stderr: stdout carries only the result
    if args.threads:
        torch.set_num_threads(args.threads)
    models_dir = args.models_dir or StateLayout(resolve_state_dir()).ensure().models
    loaded = load_model(ModelSettings(device="cpu"), models_dir)
    embedder = Embedder(EmbedderSettings())
    settings = DreamSettings(per_cycle=args.dreams, batch_size=args.dreams)

    # The graph's database stays open while dreaming: non-join dreams ask their memories' logged questions.
    tmp = tempfile.TemporaryDirectory()
    world = sample_graph(Path(tmp.name) / "state", embedder)
    atexit.register(tmp.cleanup)
    atexit.register(world.db.close)  # runs first (last in, first out)
    collisions = world.graph.collisions(world.db, args.dreams, seed=args.seed, settings=GraphSettings())
    if len(collisions) < args.dreams:
        raise SystemExit(f"only {len(collisions)} collisions in the sample graph; asked for {args.dreams}")

    generate_chats(loaded, [[{"role": "user", "content": "Hello!"}]], max_new_tokens=4)  # warm-up

    def timed(batch_size: int):
        started, cpu = time.perf_counter(), time.process_time()
        made = dream(world.db, loaded, collisions, settings, args.seed, batch_size=batch_size)
        return made, sum(d.generated_tokens for d in made), time.perf_counter() - started, time.process_time() - cpu

    batched, batched_tokens, batched_s, batched_cpu = timed(args.dreams)
    sequential, sequential_tokens, sequential_s, sequential_cpu = timed(1)
    batched_rate, sequential_rate = batched_tokens / batched_s, sequential_tokens / sequential_s
    # Per CPU-second too: on a shared machine the wall-clock ratio moves with the neighbours' load.
    cpu_speedup = (batched_tokens / batched_cpu) / (sequential_tokens / sequential_cpu)

    score_dreams(batched, ScoringContext(SignalSettings(), loaded=loaded, embed=embedder.encode))
    accept_rate = sum(d.accepted for d in batched) / len(batched)
    result = {"batched_tok_per_s": round(batched_rate, 1), "sequential_tok_per_s": round(sequential_rate, 1),
              "speedup": round(batched_rate / sequential_rate, 2), "accept_rate": round(accept_rate, 3),
              "dreams": len(batched), "batched_tokens": batched_tokens, "sequential_tokens": sequential_tokens,
              "speedup_per_cpu_s": round(cpu_speedup, 2), "threads": torch.get_num_threads()}
    if args.json:
        print(json.dumps(result))
        return
    print(f"{len(batched)} dreams on {loaded.directory.name}, {torch.get_num_threads()} threads")
    print(f"batched:    {batched_tokens} tokens in {batched_s:.1f} s = {batched_rate:.1f} tok/s")
    print(f"sequential: {sequential_tokens} tokens in {sequential_s:.1f} s = {sequential_rate:.1f} tok/s")
    print(f"speedup {result['speedup']} (goal >= 3; per CPU-second {cpu_speedup:.2f}); accept rate {accept_rate:.2f}")
    for d in batched:
        verdict = "ACCEPT" if d.accepted else "reject"
        print(f"- {verdict} t={d.temperature:.2f} {d.scenario[:70]!r} -> {d.response[:60]!r}: {d.reasons[0][:90]}")


if __name__ == "__main__":
    main()
