"""What the numbers were measured on, and the two reference figures for GFLOP/s.

- :func:`environment`: CPU model and the SIMD flags that decide ONNX Runtime's INT8
  speed (AVX-512 VNNI / AVX-VNNI / AMX turn int8 dot products into one instruction;
  without them INT8 is emulated with 16-bit multiplies and gains little), cores,
  GPU and driver, library versions, the model's input size.
- :func:`matmul_peak_gflops`: the machine's *measured* dense fp32 peak, a large
  matmul timed with numpy and torch (the better of the two; both use all cores),
  so "achieved GFLOP/s" has a realistic ceiling instead of a datasheet one; on a
  GPU also the fp16 matmul peak, the ceiling for TensorRT.
- :func:`model_flops`: FLOPs of one image through the eager serving graph, counted
  by ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matmuls; NMS and
  ROI Align are not counted, they are small next to the backbone).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
import time

# Flags worth showing: they explain most of the CPU differences between backends.
SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
              "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")
LIBRARIES = ("numpy", "torch", "torchvision", "onnx", "onnxruntime", "tritonclient", "nvidia-pytriton", "tensorrt",
             "cxr-triton")


def cpu_info() -> dict:
    """CPU model, SIMD flags present and core counts (Linux /proc/cpuinfo; best effort elsewhere)."""
    model, flags, physical = platform.processor() or platform.machine(), set(), set()
    try:
        with open("/proc/cpuinfo") as f:
            phys_id = core_id = None
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "model name":
                    model = value
                elif key == "flags":
                    flags.update(value.split())
                elif key == "physical id":
                    phys_id = value
                elif key == "core id":
                    core_id = value
                    physical.add((phys_id, core_id))
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 1
    present = [f for f in SIMD_FLAGS if f in flags]
    return {
        "model": model,
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "physical_cores": len(physical) or None,
        "simd": present,
        "avx512": "avx512f" in flags,
        "vnni": bool({"avx512_vnni", "avx_vnni"} & flags),
        "amx": "amx_tile" in flags,
    }


def gpu_info() -> dict | None:
    """Name, driver and memory of the first NVIDIA GPU, or None."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    if out.returncode != 0 or not lines:
        return None
    name, driver, memory = (p.strip() for p in (lines[0].split(",") + ["", ""])[:3])
    return {"name": name, "driver": driver, "memory": memory, "count": len(lines)}


def library_versions() -> dict:
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def environment(*, input_size: int | None = None, extra: dict | None = None) -> dict:
    """The ``env`` block of report.json."""
    threads = None
    try:
        import torch

        threads = torch.get_num_threads()
    except ImportError:
        pass
    return {
        "host": platform.node(),
        "os": f"{platform.system()} {platform.release()}",
        "cpu": cpu_info(),
        "gpu": gpu_info(),
        "torch_threads": threads,
        "libraries": library_versions(),
        "input_size": input_size,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(extra or {}),
    }


def matmul_peak_gflops(n: int = 2048, *, repeats: int = 5) -> dict:
    """Measured fp32 GEMM throughput: best of ``repeats`` timed ``n``x``n`` matmuls.

    2048 is large enough to be compute bound on a CPU (~17 GFLOP per product) and
    small enough to take well under a second on two cores.
    """
    import numpy as np

    flops = 2.0 * n**3
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    a @ b  # warm-up: thread pool start, page faults
    best_np = min(_timed(lambda: a @ b) for _ in range(repeats))
    result = {"n": n, "numpy_gflops": flops / best_np / 1e9}
    try:
        import torch

        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        ta @ tb
        best_t = min(_timed(lambda: ta @ tb) for _ in range(repeats))
        result["torch_gflops"] = flops / best_t / 1e9
        if torch.cuda.is_available():
            # The GPU ceiling for TensorRT FP16 (kept out of the CPU peak below).
            ga = torch.randn(4 * n, 4 * n, device="cuda", dtype=torch.float16)
            ga @ ga
            torch.cuda.synchronize()
            best_g = min(_timed(lambda: (ga @ ga, torch.cuda.synchronize())) for _ in range(repeats))
            result["cuda_fp16_gflops"] = 2.0 * (4 * n) ** 3 / best_g / 1e9
    except ImportError:
        pass
    result["peak_gflops"] = max(v for k, v in result.items() if k in ("numpy_gflops", "torch_gflops"))
    return result


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def model_flops(ckpt) -> float | None:
    """FLOPs of one ``[1, C, S, S]`` image through the eager serving graph (None if uncountable)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from cxr.export.graph import ServingGraph

    graph = ServingGraph.from_checkpoint(ckpt)
    x = torch.zeros(1, ckpt.preprocess.channels, graph.size, graph.size)
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            graph(x)
    except Exception:  # noqa: BLE001 - a custom op the counter cannot trace must not sink the benchmark
        return None
    total = counter.get_total_flops()
    return float(total) if total else None
