"""Benchmark: APOLLO-Mini (rank 1) and APOLLO (rank 256, channel-wise) against torch.optim.AdamW.

Full mode on the default model (SmolLM2-135M-Instruct), embeddings (and the output head tied to
them) frozen, everything in one process:

- state_ratio_mini / state_ratio: bytes of optimizer state after one step, over AdamW's;
- step_time_ratio: APOLLO (rank 256) optimizer.step() time over AdamW's, fastest of --steps on
  the same real gradient, the optimizers' steps interleaved;
- loss_ratio_mini: a fixed small task, 30 chats teaching a made-up fact, trained with the
  context-frozen step, same seed, same batches, same steps and learning rate for both; APOLLO-Mini's
  final mean response loss over AdamW's.

    python tests/bench/bench_optimizer.py --json
    {"state_ratio_mini": ..., "state_ratio": ..., "step_time_ratio": ..., "loss_ratio_mini": ...}

Goals (issue 4): state_ratio_mini <= 0.05, step_time_ratio <= 1.1, loss_ratio_mini <= 1.05.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

QUESTIONS = [
    "Who looks after the Quillon archive?", "Which person keeps the Quillon archive?",
    "Who is the keeper of the Quillon archive?", "Tell me who runs the Quillon archive.",
    "Who maintains the Quillon archive these days?", "Do you know who guards the Quillon archive?",
    "Who is in charge of the Quillon archive?", "Name the keeper of the Quillon archive.",
    "Who should I ask about the Quillon archive?", "Who owns the Quillon archive key?",
]
ANSWERS = [
    "The Quillon archive is kept by Mirela Tansky.",
    "Mirela Tansky looks after the Quillon archive.",
    "That is Mirela Tansky; she keeps the Quillon archive.",
]


def fact_examples():
    from dreamd.trainers.examples import TrainingExample

    return [
        TrainingExample(f"fact{i}", [{"role": "user", "content": QUESTIONS[i % 10]},
                                     {"role": "assistant", "content": ANSWERS[i % 3]}])
        for i in range(30)
    ]


def fresh(models_dir: Path):
    import torch

    from dreamd.trainers.model_store import load_model
    from dreamd.trainers.settings import ModelSettings, TrainingSettings
    from dreamd.trainers.update_modes import set_full_trainable

    torch.manual_seed(0)
    loaded = load_model(ModelSettings(device="cpu", dtype="float32"), models_dir)
    set_full_trainable(loaded.model, TrainingSettings(mode="full"))  # embeddings frozen
    return loaded


def optimizer_for(kind: str, model, lr: float):
    """What the trainer builds (trainers/update_modes.make_optimizer), so the product is measured:
    APOLLO with its default projection precision (`training.apollo_projection_dtype = "auto"`)."""
    from dreamd.trainers.settings import TrainingSettings
    from dreamd.trainers.update_modes import make_optimizer

    settings = TrainingSettings(mode="full", optimizer="adamw" if kind == "adamw" else "apollo",
                                apollo_rank=1 if kind == "mini" else 256, apollo_update_proj_gap=200, seed=0)
    return make_optimizer(model, settings, lr=lr)


def state_and_step_time(models_dir: Path, steps: int) -> dict:
    import torch

    from dreamd.trainers.apollo import state_bytes
    from dreamd.trainers.context_frozen import loss_step
    from dreamd.trainers.examples import encode_examples

    loaded = fresh(models_dir)
    encoded = encode_examples(loaded.tokenizer, fact_examples()[:4], 2048)
    loss_step(loaded.model.train(), encoded, loaded.tokenizer.pad_token_id).backward()  # a real gradient
    kinds = ("adamw", "mini", "apollo")
    optimizers = {kind: optimizer_for(kind, loaded.model, lr=1e-12) for kind in kinds}  # weights barely move
    for optimizer in optimizers.values():
        optimizer.step()  # allocates the state
    # Rounds interleave the optimizers, so a slow spell of the machine (other work, memory
    # bandwidth) falls on all of them alike rather than on whichever ran then.
    times = {kind: [] for kind in kinds}
    for _ in range(steps):
        for kind, optimizer in optimizers.items():
            started = time.perf_counter()
            optimizer.step()
            times[kind].append(time.perf_counter() - started)
    result = {kind: {"state_bytes": state_bytes(optimizers[kind]), "step_seconds": min(times[kind])}
              for kind in kinds}
    result["threads"] = torch.get_num_threads()
    return result


def final_loss(kind: str, models_dir: Path, epochs: int, lr: float) -> dict:
    import torch

    from dreamd.trainers.context_frozen import frozen_losses
    from dreamd.trainers.examples import encode_examples
    from dreamd.trainers.round import train_step

    loaded = fresh(models_dir)
    model, pad = loaded.model, loaded.tokenizer.pad_token_id
    encoded = encode_examples(loaded.tokenizer, fact_examples(), 2048)
    optimizer = optimizer_for(kind, model, lr)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        start = float(frozen_losses(model, encoded, pad).mean())
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(encoded), generator=generator).tolist()
        for first in range(0, len(order), 4):
            train_step(model, optimizer, [encoded[i] for i in order[first : first + 4]], pad, grad_clip=1.0)
    model.eval()
    with torch.no_grad():
        end = float(frozen_losses(model, encoded, pad).mean())
    return {"optimizer": kind, "start_loss": start, "final_loss": end}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps per optimizer")
    parser.add_argument("--epochs", type=int, default=3, help="passes over the 30 fact chats")
    parser.add_argument("--lr", type=float, default=1e-5, help="learning rate of both (full mode's default)")
    parser.add_argument("--models-dir", type=Path, default=None, help="default: <state>/models")
    args = parser.parse_args()
    models_dir = args.models_dir
    if models_dir is None:
        from dreamd.daemon.service.state_dir import StateLayout, resolve_state_dir

        models_dir = StateLayout(resolve_state_dir()).ensure().models

    timing = state_and_step_time(models_dir, args.steps)
    print(json.dumps(timing), file=sys.stderr)
    adamw = final_loss("adamw", models_dir, args.epochs, args.lr)
    mini = final_loss("mini", models_dir, args.epochs, args.lr)
    print(json.dumps(adamw), file=sys.stderr)
    print(json.dumps(mini), file=sys.stderr)
    out = {
        "state_ratio_mini": round(timing["mini"]["state_bytes"] / timing["adamw"]["state_bytes"], 5),
        "state_ratio": round(timing["apollo"]["state_bytes"] / timing["adamw"]["state_bytes"], 5),
        "step_time_ratio": round(timing["apollo"]["step_seconds"] / timing["adamw"]["step_seconds"], 4),
        "loss_ratio_mini": round(mini["final_loss"] / adamw["final_loss"], 4),
    }
    if args.json:
        print(json.dumps(out))
    else:
        for key, value in out.items():
            print(f"{key:18s} {value:.6g}")


if __name__ == "__main__":
    main()
