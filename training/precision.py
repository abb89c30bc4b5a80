"""Which precision training runs in: bfloat16 autocast where the CPU has BF16 matrix units, else FP32.

On a CPU with AMX (Sapphire Rapids and later) or AVX512-BF16, oneDNN runs bfloat16
convolutions and matrix products on those units several times faster than FP32
(measured peaks on the AMX machines: FP32 ~380 GFLOP/s, BF16 ~2.4 TFLOP/s); without
them bfloat16 is emulated and slower than FP32, so ``auto`` picks FP32 there.  On CUDA
``auto`` keeps the float16 AMP that the GPU preset always used.  Autocast keeps the
losses, the box coder, ROI Align and NMS in float32 (torchvision registers them so),
and the master weights and the optimiser stay float32.
"""

from __future__ import annotations

from enum import Enum

import torch

from cxr.errors import InvalidOptionError
from cxr.machine import cpu_info


class TrainPrecision(str, Enum):
    AUTO = "auto"
    FP32 = "fp32"
    BF16 = "bf16"  # torch.autocast("cpu", bfloat16)
    FP16 = "fp16"  # torch.autocast("cuda", float16) with a GradScaler (the GPU preset's AMP)


def cpu_has_bf16_units() -> bool:
    """AMX-BF16 or AVX512-BF16: the CPU computes bfloat16 products natively."""
    return bool({"amx_bf16", "avx512_bf16"} & set(cpu_info()["simd"]))


def resolve(precision: str, device: torch.device) -> TrainPrecision:
    """``auto`` -> what this device runs fastest at the same quality; an explicit choice is checked."""
    try:
        p = TrainPrecision(str(precision).lower())
    except ValueError as exc:
        raise InvalidOptionError(f"unknown precision {precision!r}; choose one of: "
                                 f"{', '.join(m.value for m in TrainPrecision)}") from exc
    if p is TrainPrecision.AUTO:
        if device.type == "cuda":
            return TrainPrecision.FP16
        return TrainPrecision.BF16 if cpu_has_bf16_units() else TrainPrecision.FP32
    if p is TrainPrecision.FP16 and device.type != "cuda":
        raise InvalidOptionError("--precision fp16 is CUDA automatic mixed precision; on the CPU use bf16 or fp32")
    return p


def autocast(precision: TrainPrecision, device: torch.device):
    """The autocast context for one forward pass at ``precision`` (disabled for fp32)."""
    if precision is TrainPrecision.BF16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision is TrainPrecision.FP16:
        return torch.autocast(device.type, dtype=torch.float16)
    return torch.autocast(device.type, enabled=False)
