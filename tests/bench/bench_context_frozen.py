"""Benchmark: the context-frozen step against completion-only full-sequence backprop.

On the default model (SmolLM2-135M-Instruct) in full mode with every weight trainable, one
training example of a 64-token response after a context of 2048 and of 4096 tokens. Each
measurement (method x context length) runs in its own process, so the peak memory it reports
(the process's peak resident set, ru_maxrss: model, gradients and activations together) is its
own. The time is forward + backward of one step: the fastest of --repeats after one warm-up step
(the fastest is the one least disturbed by other work on a shared machine).

    python tests/bench/bench_context_frozen.py --json
    {"time_ratio_2048": ..., "peak_mem_ratio_2048": ..., "time_ratio_4096": ...,
     "peak_mem_ratio_4096": ..., "loss_abs_diff": ...}          (ratios: frozen over baseline)

Goals (issue 4): time_ratio_2048 <= 0.30, peak_mem_ratio_2048 <= 0.40, time_ratio_4096 <= 0.22,
peak_mem_ratio_4096 <= 0.25, loss_abs_diff <= 1e-4. Details of each measurement go to stderr.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

RESPONSE_TOKENS = 64
CONTEXTS = (2048, 4096)
SAMPLES = Path(__file__).resolve().parents[2] / "memory_graph" / "samples" / "team_chats.jsonl"


def long_example(tokenizer, context_tokens: int):
    """A chat long enough to fill `context_tokens`, cut to exactly that, with a 64-token response."""
    from dreamd.trainers.examples import EncodedExample, TrainingExample, encode_example

    chats = [json.loads(line)["messages"] for line in SAMPLES.read_text().splitlines() if line.strip()]
    history = []
    while (len(tokenizer(tokenizer.apply_chat_template(history + chats[0], tokenize=False))["input_ids"])
           < context_tokens + 200):
        history += [m for chat in chats for m in chat]
    answer = " ".join(m["content"] for m in chats[0] + chats[1] + chats[2])
    messages = [*history, {"role": "user", "content": "Summarise what we agreed."},
                {"role": "assistant", "content": answer}]
    encoded = encode_example(tokenizer, TrainingExample("bench", messages), max_context_tokens=context_tokens)
    assert len(encoded.context_ids) == context_tokens and len(encoded.response_ids) >= RESPONSE_TOKENS
    return EncodedExample("bench", encoded.context_ids, encoded.response_ids[:RESPONSE_TOKENS])


def worker(method: str, context_tokens: int, repeats: int, models_dir: Path) -> dict:
    import resource

    import torch

    from dreamd.trainers.context_frozen import completion_only_loss, loss_step
    from dreamd.trainers.model_store import load_model
    from dreamd.trainers.settings import ModelSettings

    torch.manual_seed(0)
    loaded = load_model(ModelSettings(device="cpu", dtype="float32"), models_dir)
    model = loaded.model.train()
    for parameter in model.parameters():
        parameter.requires_grad_(True)  # full mode with every weight trainable, embeddings too
    example = long_example(loaded.tokenizer, context_tokens)
    pad = loaded.tokenizer.pad_token_id

    def step() -> float:
        model.zero_grad(set_to_none=False)  # gradients stay allocated, as in training
        loss = loss_step(model, [example], pad) if method == "frozen" else completion_only_loss(model, example)
        loss.backward()
        return float(loss.detach())

    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    loss = step()  # warm-up (allocates the gradients)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"method": method, "context": context_tokens, "seconds": min(times), "times": times,
            "peak_rss_bytes": peak, "rss_after_load_bytes": rss_loaded, "loss": loss,
            "threads": torch.get_num_threads()}


def measure(method: str, context_tokens: int, repeats: int, models_dir: Path) -> dict:
    command = [sys.executable, __file__, "--worker", method, "--context", str(context_tokens),
               "--repeats", str(repeats), "--models-dir", str(models_dir)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"measurement {method}@{context_tokens} failed:\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(result), file=sys.stderr)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument("--repeats", type=int, default=2, help="timed steps per measurement (after one warm-up)")
    parser.add_argument("--models-dir", type=Path, default=None, help="default: <state>/models")
    parser.add_argument("--worker", choices=("baseline", "frozen"), help=argparse.SUPPRESS)
    parser.add_argument("--context", type=int, default=2048, help=argparse.SUPPRESS)
    args = parser.parse_args()
    models_dir = args.models_dir
    if models_dir is None:
        from dreamd.daemon.service.state_dir import StateLayout, resolve_state_dir

        models_dir = StateLayout(resolve_state_dir()).ensure().models
    if args.worker:
        print(json.dumps(worker(args.worker, args.context, args.repeats, models_dir)))
        return

    from dreamd.trainers.model_store import resolve_model_dir
    from dreamd.trainers.settings import ModelSettings

    resolve_model_dir(ModelSettings(), models_dir)  # convert once here, not inside a timed worker
    out, diffs = {}, []
    for context_tokens in CONTEXTS:
        base = measure("baseline", context_tokens, args.repeats, models_dir)
        frozen = measure("frozen", context_tokens, args.repeats, models_dir)
        out[f"time_ratio_{context_tokens}"] = round(frozen["seconds"] / base["seconds"], 4)
        out[f"peak_mem_ratio_{context_tokens}"] = round(frozen["peak_rss_bytes"] / base["peak_rss_bytes"], 4)
        diffs.append(abs(frozen["loss"] - base["loss"]))
    out["loss_abs_diff"] = max(diffs)
    if args.json:
        print(json.dumps(out))
    else:
        for key, value in out.items():
            print(f"{key:22s} {value:.6g}")


if __name__ == "__main__":
    main()
