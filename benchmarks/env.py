"""What the numbers were measured on, and the two reference figures for GFLOP/s.

- :func:`environment`: CPU model and the SIMD flags that decide ONNX Runtime's INT8
  speed (AVX-512 VNNI / AVX-VNNI / AMX turn int8 dot products into one instruction;
  without them INT8 is emulated with 16-bit multiplies and gains little), cores,
  GPU and driver, library versions, the model's input size.
- :func:`gemm_peaks`: the machine's *measured* dense GEMM peaks per precision, so
  "achieved GFLOP/s" has a realistic ceiling instead of a datasheet one: FP32 (numpy
  and torch matmul, the better), BF16 (torch bfloat16 matmul: oneDNN, on AVX512-BF16
  or AMX-BF16 where present, else emulated) and INT8 (torch ``_int_mm`` -- oneDNN
  u8s8/s8s8 -- and an ONNX Runtime ``MatMulInteger`` micro-model -- MLAS's U8S8 GEMM,
  the kernel ORT's INT8 convolutions use -- the better; both run VNNI/AMX where
  present); on a GPU also the fp16 matmul peak, the ceiling for TensorRT.  All use
  every usable core.
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

from cxr.machine import cpu_info, isa_line

LIBRARIES = ("numpy", "torch", "torchvision", "onnx", "onnxruntime", "openvino", "tritonclient", "nvidia-pytriton",
             "tensorrt", "cxr-triton")


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
    cpu = cpu_info()
    return {
        "host": platform.node(),
        "os": f"{platform.system()} {platform.release()}",
        "cpu": cpu,
        "isa": isa_line(cpu),
        "load_average": load_average(),
        "gpu": gpu_info(),
        "torch_threads": threads,
        "libraries": library_versions(),
        "input_size": input_size,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(extra or {}),
    }


def gemm_peaks(n: int = 2048, *, repeats: int = 5) -> dict:
    """Measured GEMM throughput per precision (see the module docstring); GFLOP/s (GOP/s for INT8).

    ``{"n", "fp32": {"gflops", "numpy", "torch"}, "bf16": {"gflops", "native"}, "int8": {"gflops",
    "torch_int_mm", "ort_matmul_integer", "native"}, "cuda_fp16"?: {"gflops"}}``; ``native`` says
    whether the CPU has the instructions (VNNI/AMX-INT8, AVX512-BF16/AMX-BF16), ``how`` what was timed.
    A precision that cannot be measured here has ``gflops`` None and the reason in ``error``.
    """
    cpu = cpu_info()
    simd = set(cpu["simd"])
    fp32 = matmul_peak_gflops(n, repeats=repeats)
    out = {"n": n, "fp32": {"gflops": fp32["peak_gflops"], "numpy": fp32["numpy_gflops"], "torch": fp32.get("torch_gflops"),
                            "how": f"numpy and torch float32 matmul {n}x{n}, the better"}}
    if "cuda_fp16_gflops" in fp32:
        out["cuda_fp16"] = {"gflops": fp32["cuda_fp16_gflops"], "how": f"torch float16 matmul {4 * n}x{4 * n} on the GPU"}
    flops = 2.0 * n**3
    bf16 = {"gflops": None, "native": bool({"avx512_bf16", "amx_bf16"} & simd), "how": f"torch bfloat16 matmul {n}x{n}"}
    int8 = {"gflops": None, "native": bool(cpu["vnni"] or "amx_int8" in simd),
            "how": f"torch._int_mm int8 {n}x{n} and ONNX Runtime MatMulInteger u8s8 {n}x{n}, the better"}
    try:
        import torch

        a, b = torch.randn(n, n), torch.randn(n, n)
        ab, bb = a.bfloat16(), b.bfloat16()
        ab @ bb
        bf16["gflops"] = flops / min(_timed(lambda: ab @ bb) for _ in range(repeats)) / 1e9
        ai, bi = (torch.randint(-128, 128, (n, n), dtype=torch.int8) for _ in range(2))
        try:
            torch._int_mm(ai, bi)
            int8["torch_int_mm"] = flops / min(_timed(lambda: torch._int_mm(ai, bi)) for _ in range(repeats)) / 1e9
        except (RuntimeError, AttributeError) as exc:  # older torch: no CPU _int_mm
            int8["torch_error"] = str(exc)[:200]
    except ImportError as exc:
        bf16["error"] = str(exc)
    try:
        int8["ort_matmul_integer"] = _ort_int8_gops(n, repeats)
    except Exception as exc:  # noqa: BLE001 - onnxruntime missing or a build without the op
        int8["ort_error"] = f"{type(exc).__name__}: {exc}"[:200]
    measured = [v for k, v in int8.items() if k in ("torch_int_mm", "ort_matmul_integer") and v]
    int8["gflops"] = max(measured) if measured else None
    out["bf16"], out["int8"] = bf16, int8
    return out


def merge_peaks(first: dict, second: dict) -> dict:
    """The higher of two :func:`gemm_peaks` runs per precision (both kept under ``runs``).

    On a shared machine a peak measured while others compute is too low and would put a
    backend measured in a quieter moment above 100 %; the better of a measurement before
    and one after the models is the closer ceiling.
    """
    if not first or not second:
        return first or second
    out = {"n": first.get("n"), "runs": [first, second]}
    for key in ("fp32", "bf16", "int8", "cuda_fp16"):
        runs = [r[key] for r in (first, second) if r.get(key)]
        if runs:
            out[key] = max(runs, key=lambda r: r.get("gflops") or 0.0)
    return out


def _ort_int8_gops(n: int, repeats: int) -> float:
    """``A (uint8, n x n) @ B (int8 constant)`` through ONNX Runtime's MatMulInteger: MLAS's U8S8 GEMM."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.integers(-128, 128, (n, n), dtype=np.int8), "B")
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["A", "B"], ["Y"])], "int8-peak",
                              [helper.make_tensor_value_info("A", TensorProto.UINT8, [n, n])],
                              [helper.make_tensor_value_info("Y", TensorProto.INT32, [n, n])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 8)  # what this onnxruntime reads
    onnx.checker.check_model(model)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    opts.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feed = {"A": rng.integers(0, 256, (n, n), dtype=np.uint8)}
    session.run(None, feed)
    return 2.0 * n**3 / min(_timed(lambda: session.run(None, feed)) for _ in range(repeats)) / 1e9


def load_average() -> list[float] | None:
    """The 1/5/15-minute load averages (a figure measured at a load near the core count is provisional)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


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
