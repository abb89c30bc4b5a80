"""ONNX -> TensorRT FP16 engine (``model.plan``) with the TensorRT Python API.

Stock TensorRT only: the graph's NonMaxSuppression, RoiAlign, TopK and
ScatterElements map to built-in layers (INMSLayer etc.), so no plugin library has
to be preloaded into Triton.  The engine gets one optimisation profile over the
batch dimension and a timing cache (reused between builds on the same GPU); its
metadata (TensorRT version, GPU, precision, profile, the checkpoint's metadata)
is written next to it as ``model.plan.json``.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cxr.contract import SEGMENT_RAW_OUTPUTS
from cxr.errors import InvalidOptionError, UsageError

log = logging.getLogger(__name__)


class TensorRTUnavailable(UsageError):
    """No NVIDIA GPU or no TensorRT on this machine."""


@dataclass(frozen=True)
class BatchProfile:
    """The batch sizes the engine is optimised for (min <= opt <= max)."""

    min: int = 1
    opt: int = 4
    max: int = 8

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise InvalidOptionError(f"batch profile needs 1 <= min <= opt <= max, got {self.min}/{self.opt}/{self.max}")

    def shapes(self, channels: int, size: int) -> tuple[tuple[int, ...], ...]:
        return tuple((b, channels, size, size) for b in (self.min, self.opt, self.max))


def gpu_name() -> str | None:
    """Name of the first NVIDIA GPU, or None when there is none."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    names = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    return names[0] if out.returncode == 0 and names else None


def require_tensorrt():
    """Import TensorRT, or raise :class:`TensorRTUnavailable` saying what is missing."""
    gpu = gpu_name()
    if gpu is None:
        raise TensorRTUnavailable(
            "TensorRT FP16 needs an NVIDIA GPU and none was found (nvidia-smi absent or reports no GPU); "
            "on a CPU machine export `onnx` or `onnx-int8` instead"
        )
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TensorRTUnavailable(
            f"GPU {gpu} found but the TensorRT Python package is not installed: pip install tensorrt "
            "(or run inside the NGC tritonserver / tensorrt container)"
        ) from exc
    return trt


def build_engine(
    onnx_path: str | Path,
    plan_path: str | Path,
    *,
    channels: int,
    size: int,
    profile: BatchProfile = BatchProfile(),
    fp16: bool = True,
    workspace_gib: float = 4.0,
    timing_cache: str | Path | None = None,
    metadata: dict | None = None,
) -> Path:
    """Build and serialise an engine from ``onnx_path``; returns ``plan_path``."""
    trt = require_tensorrt()
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(network.get_input(0).name, *profile.shapes(channels, size))
    config.add_optimization_profile(opt_profile)
    cache_path = Path(timing_cache) if timing_cache else plan_path.with_suffix(".timing-cache")
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the log above)")
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_bytes(bytes(serialized))
    cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    meta = dict(metadata or {})
    meta.update(precision="fp16" if fp16 else "fp32", tensorrt_version=trt.__version__, gpu=gpu_name(), profile=asdict(profile))
    engine_metadata_path(plan_path).write_text(json.dumps(meta, indent=2, sort_keys=True))
    log.info("wrote %s (%.1f MB) for %s", plan_path, plan_path.stat().st_size / 1e6, meta["gpu"])
    return plan_path


def engine_metadata_path(plan_path: str | Path) -> Path:
    return Path(str(plan_path) + ".json")


def graph_outputs(names) -> list[str]:
    """An engine's output tensor names in the graph's order (:func:`cxr.contract.raw_outputs`): a detector's
    four, a Mask R-CNN's five (TensorRT lists I/O tensors in its own order); an engine lacking one of the
    four is refused by name."""
    missing = [n for n in SEGMENT_RAW_OUTPUTS[:4] if n not in names]
    if missing:
        raise ValueError(f"the engine has no output {', '.join(missing)} (it has {', '.join(names)}): not a cxr serving graph")
    return [n for n in SEGMENT_RAW_OUTPUTS if n in names]


class TrtDetector:
    """Callable ``[B, C, S, S]`` float32 -> (boxes, scores, labels, valid[, masks]) on the GPU."""

    def __init__(self, plan_path: str | Path) -> None:
        trt = require_tensorrt()
        import torch

        self._torch = torch
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(Path(plan_path).read_bytes())
        self.context = self.engine.create_execution_context()
        self.names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_name = next(n for n in self.names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output_names = [n for n in self.names if n != self.input_name]
        self._dtypes = {n: torch.from_numpy(np.zeros(1, dtype=trt.nptype(self.engine.get_tensor_dtype(n)))).dtype for n in self.names}

    def __call__(self, batch: np.ndarray):
        torch = self._torch
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).cuda()
        self.context.set_input_shape(self.input_name, tuple(x.shape))
        self.context.set_tensor_address(self.input_name, x.data_ptr())
        outs = {}
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            outs[name] = torch.empty(shape, dtype=self._dtypes[name], device="cuda")
            self.context.set_tensor_address(name, outs[name].data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()
        return tuple(outs[n].cpu().numpy() for n in graph_outputs(self.output_names))
