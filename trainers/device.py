"""Pick the device and precision the model runs in: CUDA with bf16 when there is one, else CPU fp32."""

from __future__ import annotations

import torch

from dreamd.trainers.errors import ModelLoadError

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str = "auto", dtype: str = "auto") -> tuple[torch.device, torch.dtype]:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"is {device!r} but this torch sees no CUDA device", key="model.device")
    resolved = torch.device(device)
    if dtype == "auto":
        # bf16 halves memory and is fast on GPUs that have it; CPUs here are faster and exact in fp32.
        bf16_ok = resolved.type == "cuda" and torch.cuda.is_bf16_supported()
        return resolved, torch.bfloat16 if bf16_ok else torch.float32
    return resolved, _DTYPES[dtype]


def projection_dtype(setting: str, device: torch.device) -> str | None:
    """APOLLO's projection precision: `auto` is bf16 where the hardware multiplies it natively
    (CUDA with bf16, a CPU with AVX512-BF16 or AMX), else the gradient's own dtype (None)."""
    if setting != "auto":
        return setting
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else None
    return "bfloat16" if _cpu_has_native_bf16() else None


def _cpu_has_native_bf16() -> bool:
    # Without these instructions torch emulates bf16 matmuls, slower than fp32.
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False
