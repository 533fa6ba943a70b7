"""Training examples of random characters: a round on them at a high learning rate wrecks a model,
which is what the gate's tests need a checkpoint to be."""

import random
import string

from dreamd.trainers.examples import TrainingExample


def noise_examples(count: int, prefix: str = "noise") -> list[TrainingExample]:
    rng = random.Random(0)

    def noise(n: int) -> str:
        return "".join(rng.choice(string.ascii_letters + string.punctuation) for _ in range(n))

    return [TrainingExample(f"{prefix}:{i}", [{"role": "user", "content": noise(30)},
                                              {"role": "assistant", "content": noise(60)}]) for i in range(count)]
