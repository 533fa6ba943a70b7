"""What vLLM would refuse in an exported LoRA adapter, found before the user finds it at load time.

vLLM serves a PEFT adapter (`--enable-lora --lora-modules name=DIR`) only if its rank is at most
`--max-lora-rank` (16 unless raised), it trains no whole modules besides the LoRA matrices
(`modules_to_save`), it is plain LoRA (not DoRA), and it has no bias terms unless the server was
started with `--enable-lora-bias`. A pure function of the adapter's config, so `dreamctl export`
and its tests share it.
"""

from __future__ import annotations

import json
from pathlib import Path

VLLM_DEFAULT_MAX_LORA_RANK = 16


def adapter_problems(adapter_config: dict, max_lora_rank: int = VLLM_DEFAULT_MAX_LORA_RANK) -> list[str]:
    """The reasons vLLM would reject this adapter (empty: it loads)."""
    problems = []
    rank = adapter_config.get("r")
    if isinstance(rank, int) and rank > max_lora_rank:
        problems.append(f"LoRA rank {rank} is over --max-lora-rank {max_lora_rank}: start vLLM with "
                        f"--max-lora-rank {rank} or more")
    ranks = adapter_config.get("rank_pattern") or {}
    over = {name: r for name, r in ranks.items() if isinstance(r, int) and r > max_lora_rank}
    if over:
        problems.append(f"per-module ranks over --max-lora-rank {max_lora_rank}: {over}")
    if adapter_config.get("modules_to_save"):
        problems.append(f"modules_to_save is set ({adapter_config['modules_to_save']}): vLLM loads only the LoRA "
                        "matrices; export with --merged instead")
    if adapter_config.get("use_dora"):
        problems.append("the adapter is DoRA (use_dora), which vLLM does not serve; export with --merged instead")
    if adapter_config.get("bias") not in (None, "none"):
        problems.append(f"the adapter trains biases (bias = {adapter_config['bias']!r}): vLLM needs "
                        "--enable-lora-bias for it")
    return problems


def adapter_dir_problems(adapter_dir: Path, max_lora_rank: int = VLLM_DEFAULT_MAX_LORA_RANK) -> list[str]:
    try:
        config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return [f"adapter_config.json cannot be read: {exc}"]
    return adapter_problems(config, max_lora_rank)
