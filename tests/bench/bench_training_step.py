"""Benchmark: a training step on a round's mix of examples, packed rows against padded rows.

On the default model (SmolLM2-135M-Instruct) with the daemon's LoRA and APOLLO settings: batches
of 4 drawn at random (fixed seed) from a round-like mix, 40% short fact exchanges (the
memory-formation experiment's Zypher logs, one question and answer each) and 60% anchors (the
shipped bank's prompts with the base model's cached answers, learned by KL to the base), as a
dream round mixes facts and anchors. Each batch is trained twice in turn, packed
(`trainers/packing.py`: examples end to end in a row, block-diagonal attention) and padded (one
example per row, padded to the batch's widest: what the step did before packing, got here by a
budget of one token per row), the two interleaved so drift on a shared machine hits both alike.
Both start from the same weights each time (the step's loss is recorded, the update discarded),
so they compute the same losses.

    python tests/bench/bench_training_step.py --json
    {"packed_s_per_step": ..., "padded_s_per_step": ..., "time_ratio": ..., "padding_share": ...,
     "loss_abs_diff": ...}

time_ratio is packed over padded (lower is better); padding_share the share of the padded
batches' tokens that were padding. Goal: packing at most 0.75 of the padded step's time with the
same losses (loss_abs_diff <= 1e-4). Details go to stderr.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import time
from pathlib import Path

FACT_SHARE = 0.4
BATCH = 4


def round_mix(loaded, models_dir: Path, count: int, seed: int) -> list:
    """`count` encoded examples: facts from the experiment's Zypher logs and anchors from the bank."""
    from dreamd.daemon.experiments.memory_formation.facts import training_exchanges
    from dreamd.trainers.anchors import base_anchors
    from dreamd.trainers.examples import TrainingExample, encode_examples
    from dreamd.trainers.model_store import resolve_model_dir
    from dreamd.trainers.settings import ModelSettings

    rng = random.Random(seed)
    facts = [TrainingExample(f"fact:{i}", [{"role": "user", "content": q}, {"role": "assistant", "content": a}])
             for i, (q, a) in enumerate(training_exchanges("Zypher"))]
    anchors = [a.example("anchor") for a in base_anchors(resolve_model_dir(ModelSettings(), models_dir), models_dir,
                                                           lambda: loaded)]
    wanted = round(count * FACT_SHARE)
    mix = rng.sample(facts * (1 + wanted // len(facts)), wanted) + rng.sample(anchors, count - wanted)
    rng.shuffle(mix)
    return encode_examples(loaded.tokenizer, mix, max_context_tokens=2048)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument("--steps", type=int, default=12, help="batches timed per method (after one warm-up each)")
    parser.add_argument("--models-dir", type=Path, default=None, help="default: <state>/models")
    args = parser.parse_args()
    if args.models_dir is None:
        from dreamd.daemon.service.state_dir import StateLayout, resolve_state_dir

        args.models_dir = StateLayout(resolve_state_dir()).ensure().models

    import torch

    from dreamd.trainers import context_frozen
    from dreamd.trainers.model_store import load_model
    from dreamd.trainers.settings import ModelSettings, TrainingSettings
    from dreamd.trainers.update_modes import make_lora, make_optimizer

    torch.manual_seed(0)
    loaded = load_model(ModelSettings(device="cpu", dtype="float32"), args.models_dir)
    settings = TrainingSettings()
    examples = round_mix(loaded, args.models_dir, BATCH * (args.steps + 1), seed=0)
    model = make_lora(loaded.model, settings).train()
    optimizer = make_optimizer(model, settings)
    pad = loaded.tokenizer.pad_token_id
    budgets = {"packed": context_frozen.PACK_TOKENS, "padded": 1}

    def step(batch: list, method: str) -> tuple[float, float]:
        context_frozen.PACK_TOKENS = budgets[method]
        optimizer.zero_grad(set_to_none=True)
        started = time.perf_counter()
        loss = context_frozen.loss_step(model, batch, pad, soft_weight=settings.anchor_weight)
        loss.backward()
        optimizer.step()  # APOLLO's step, as in training; its update is then taken back
        seconds = time.perf_counter() - started
        return seconds, float(loss.detach())

    weights = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    state = copy.deepcopy(optimizer.state_dict())
    times: dict[str, list[float]] = {"packed": [], "padded": []}
    diffs, real, padded_tokens = [], 0, 0
    for index in range(args.steps + 1):
        batch = examples[index * BATCH : (index + 1) * BATCH]
        losses = {}
        for method in ("packed", "padded") if index % 2 else ("padded", "packed"):
            seconds, losses[method] = step(batch, method)
            with torch.no_grad():  # back to the same weights and optimizer state for the other method
                for name, p in model.named_parameters():
                    if name in weights:
                        p.copy_(weights[name])
            optimizer.load_state_dict(copy.deepcopy(state))
            if index:  # the first batch warms up
                times[method].append(seconds)
        diffs.append(abs(losses["packed"] - losses["padded"]))
        widths = [len(e.context_ids) + len(e.response_ids) - 1 for e in batch]
        real += sum(widths)
        padded_tokens += max(widths) * len(batch)
        print(json.dumps({"batch": index, "tokens": widths, **losses}), file=sys.stderr)
    context_frozen.PACK_TOKENS = budgets["packed"]
    packed, padded = sum(times["packed"]) / args.steps, sum(times["padded"]) / args.steps
    out = {"packed_s_per_step": round(packed, 3), "padded_s_per_step": round(padded, 3),
           "time_ratio": round(packed / padded, 4), "padding_share": round(1 - real / padded_tokens, 4),
           "loss_abs_diff": max(diffs), "threads": torch.get_num_threads()}
    if args.json:
        print(json.dumps(out))
    else:
        for key, value in out.items():
            print(f"{key:20s} {value:.6g}")


if __name__ == "__main__":
    main()
