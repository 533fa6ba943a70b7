"""Benchmark: `dreamd serve` under 8 concurrent clients against the same requests one at a time
through the model's `generate`, on the default model, in one run.

A real `dreamd serve` process (torch's default threads, or `--threads`) answers 8 streaming clients started
together, each asking greedily for 64 tokens (after one warm-up request); tokens are the
completion tokens the server reports, the time is the wall time from the clients' start to the
last reply; time to first token is per client, from its request to its first content chunk.
Then the same 8 chats are answered one at a time by `trainers.generate.generate_chats` (batch
size 1, 64 new tokens, greedy) in this process, the server idle. Both run `--repeats` times,
alternating, and the fastest of each is kept (with the first-token times of the fastest served
round), as a machine shared with other jobs slows some rounds.

    .venv/bin/python tests/bench/bench_serve.py --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

PROMPTS = [
    "Write a long story about a lighthouse keeper who finds a message in a bottle.",
    "Explain in detail how bread is made, step by step.",
    "Describe a walk through a busy market in a large city.",
    "Write a letter to a friend about your summer holidays.",
    "Explain how the water cycle works, with examples.",
    "Tell me everything you know about the history of bicycles.",
    "Describe your ideal garden and what you would grow in it.",
    "Write a detailed guide to planning a hiking trip in the mountains.",
]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low, high = int(position), min(int(position) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def served(server, clients: int, tokens: int) -> tuple[float, list[float], int]:
    client = server.client()
    client.chat.completions.create(model="dreamd", messages=[{"role": "user", "content": "Hello"}], max_tokens=8,
                                   temperature=0)  # warm-up: first-call costs are not what is measured
    start = threading.Barrier(clients + 1)
    first: list[float] = []
    counts: list[int] = []
    errors: list[BaseException] = []

    def ask(prompt: str) -> None:
        start.wait()
        began = time.perf_counter()
        seen_first = False
        try:
            for chunk in client.chat.completions.create(
                    model="dreamd", messages=[{"role": "user", "content": prompt}], max_tokens=tokens, temperature=0,
                    stream=True, stream_options={"include_usage": True}):
                if not seen_first and chunk.choices and chunk.choices[0].delta.content:
                    first.append(time.perf_counter() - began)
                    seen_first = True
                if chunk.usage is not None:
                    counts.append(chunk.usage.completion_tokens)
        except BaseException as exc:  # reported after the run
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(PROMPTS[i % len(PROMPTS)],)) for i in range(clients)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    if errors:
        raise RuntimeError(f"{len(errors)} clients failed: {errors[0]!r}")
    return wall, first, sum(counts)


def sequential(loaded, clients: int, tokens: int) -> tuple[float, int]:
    from dreamd.trainers.generate import generate_chats

    generate_chats(loaded, [[{"role": "user", "content": "Hello"}]], max_new_tokens=8)  # the same warm-up
    began = time.perf_counter()
    total = 0
    for i in range(clients):
        chat = [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]
        total += generate_chats(loaded, [chat], max_new_tokens=tokens, batch_size=1)[0].tokens
    return time.perf_counter() - began, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads, in the server and here alike (0: torch's default)")
    parser.add_argument("--models-dir", type=Path, default=None, help="default: <state>/models")
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from dreamd.daemon.service.logs import configure_logging
    from dreamd.daemon.service.state_dir import StateLayout, resolve_state_dir
    from dreamd.trainers.model_store import load_model, resolve_model_dir
    from dreamd.trainers.settings import ModelSettings
    from tests.helpers.serve_process import ServeProcess

    configure_logging("console", "warning")  # stderr: stdout carries only the result
    models_dir = args.models_dir or StateLayout(resolve_state_dir()).ensure().models
    model_dir = resolve_model_dir(ModelSettings(device="cpu"), models_dir)

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    loaded = load_model(ModelSettings(path=str(model_dir), device="cpu"), models_dir)
    served_runs, sequential_runs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        server = ServeProcess(Path(tmp), model_dir, f"log_conversations = false\nmax_batch = {args.clients}\n",
                              threads=args.threads or None).start()
        try:
            for _ in range(args.repeats):
                wall, first, tokens = served(server, args.clients, args.tokens)
                served_runs.append((tokens / wall, first, tokens))
                seconds, tokens = sequential(loaded, args.clients, args.tokens)
                sequential_runs.append((tokens / seconds, tokens))
        finally:
            server.stop()
    served_rate, first, served_tokens = max(served_runs, key=lambda run: run[0])
    sequential_rate, sequential_tokens = max(sequential_runs, key=lambda run: run[0])
    result = {
        "served_tok_per_s": round(served_rate, 1),
        "sequential_tok_per_s": round(sequential_rate, 1),
        "speedup": round(served_rate / sequential_rate, 2),
        "p50_first_token_ms": round(statistics.median(first) * 1000),
        "p95_first_token_ms": round(percentile(first, 0.95) * 1000),
        "clients": args.clients,
        "threads": args.threads or "default",
        "served_tokens": served_tokens,
        "sequential_tokens": sequential_tokens,
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:24} {value}")


if __name__ == "__main__":
    main()
