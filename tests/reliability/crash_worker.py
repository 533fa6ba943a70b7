"""Run by the reliability tests in a child process that SIGKILLs itself at a chosen moment.

    crash_worker.py write STATE PHASE   train checkpoint A, then die while writing B at PHASE
    crash_worker.py train STATE REF     train checkpoint A, record what it saved in REF, then die
                                        in the middle of the next round's training
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from dreamd.daemon.service.state_dir import StateLayout
from dreamd.trainers.checkpoints import weights as checkpoint_io
from dreamd.trainers.round import start_trainer, train_round
from dreamd.trainers.settings import TrainingSettings
from tests.helpers.train import chats, tiny_loaded

SETTINGS = TrainingSettings(mode="lora", lora_learning_rate=1e-2, batch_size=2, epochs=1)


def die(*_args) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def write(layout: StateLayout, phase: str) -> None:
    first = train_round(tiny_loaded(), chats(2), SETTINGS, layout)
    print("ID", first, flush=True)
    def die_at_phase(name: str) -> None:
        if name == phase:
            die()

    if phase == "writing":  # in the middle of the payload: weights written, optimizer state not
        checkpoint_io.save_optimizer = die
        on_phase = None
    else:
        on_phase = die_at_phase
    second = train_round(tiny_loaded(), chats(2, "b"), SETTINGS, layout, parent_id=first, on_phase=on_phase)
    print("ID", second, flush=True)


def train(layout: StateLayout, ref: Path) -> None:
    from peft import get_peft_model_state_dict

    trainer = start_trainer(tiny_loaded(), SETTINGS, layout)
    trainer.run(checkpoint_io_encode(trainer, chats(4)))
    first = trainer.save(layout)
    tensors = {f"adapter/{k}": v.detach().clone().contiguous()
               for k, v in get_peft_model_state_dict(trainer.model).items()}
    tensors["rng/torch"] = torch.get_rng_state()
    tensors["rng/order"] = trainer.generator.get_state()
    steps = [float(state["step"]) for state in trainer.optimizer.state.values()]
    tensors["optimizer/steps"] = torch.tensor(steps)
    save_file(tensors, str(ref))
    print("ID", first, flush=True)
    steps_done = []
    train_round(tiny_loaded(), chats(6, "b"), SETTINGS, layout, parent_id=first,
                on_step=lambda step, _result: steps_done.append(step) or (die() if len(steps_done) == 2 else None))


def checkpoint_io_encode(trainer, examples):
    from dreamd.trainers.examples import encode_examples

    return encode_examples(trainer.tokenizer, examples, SETTINGS.max_context_tokens)


if __name__ == "__main__":
    action, state_dir, arg = sys.argv[1:4]
    layout = StateLayout(Path(state_dir)).ensure()
    write(layout, arg) if action == "write" else train(layout, Path(arg))
