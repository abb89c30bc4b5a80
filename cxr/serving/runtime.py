"""Detectors in process: the exported graph in ONNX Runtime or OpenVINO (torch-free).

Both are callables ``[B, C, S, S]`` float32 -> (boxes, scores, labels, valid), the
detector step of :class:`cxr.serving.pipeline.Pipeline` and of the served CPU detector;
the eager PyTorch graph is the same callable in :mod:`cxr.export.torch_detector`.

Low precision on the CPU: ONNX Runtime runs the INT8 QDQ model (U8S8 kernels: VNNI /
AMX where present); OpenVINO (optional, PyPI ``openvino``) compiles the same ONNX files
for its CPU plugin (FP32, INT8 from the QDQ model, or ``bf16`` inference precision).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from cxr.errors import InvalidOptionError, MissingFileError
from cxr.serving.steps import RawOutput


OPTIMIZATION_LEVELS = ("none", "basic", "extended", "all")
OPENVINO_PRECISIONS = ("f32", "bf16")


def openvino_precision(precision: str) -> str:
    """OpenVINO's inference precision hint for a served precision (cxr.contract.Precision's value): BF16
    is the hint on the FP32 file and, for INT8-BF16, on the INT8 QDQ file's unquantized layers; FP32 and
    plain INT8 run with f32."""
    return "bf16" if str(precision) in ("bf16", "int8-bf16") else "f32"


def ort_session(path: str | Path, *, threads: int | None = None, optimization: str = "all",
                memory_arena: bool = True, spinning: bool = True, config: dict[str, str] | None = None):
    """An ``onnxruntime.InferenceSession`` on the CPU with graph optimisations.

    threads: intra-op threads (default: all cores; Triton instances should set it to
    cores / instances so they do not oversubscribe).
    memory_arena: ONNX Runtime's CPU memory arena (its default).  The arena keeps every
    block it ever allocated, so a long-lived server seeing many batch sizes and
    data-dependent detection shapes ratchets up in steps; off, tensors go to malloc and
    are returned, at 20-50% more time per call (benchmarks/README.md, "Soak").
    spinning: ORT's intra-op threads busy-wait for the next work item between kernels
    (its default).  In process that shaves off wake-up latency; in a server whose other
    processes (preprocess, postprocess, gRPC) share the same few cores it burns cycles
    they need (benchmarks/README.md, "Serving overhead").
    config: further session config entries (``SessionOptions.add_session_config_entry``).
    """
    import onnxruntime as ort

    levels = dict(zip(OPTIMIZATION_LEVELS, (
        ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)))
    if optimization not in levels:
        raise InvalidOptionError(f"unknown optimization level {optimization!r}; choose one of: {', '.join(levels)}")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = levels[optimization]
    opts.intra_op_num_threads = threads or os.cpu_count() or 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3  # warnings about unused initializers etc. are noise here
    opts.enable_cpu_mem_arena = memory_arena
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    for key, value in (config or {}).items():
        opts.add_session_config_entry(key, str(value))
    if not Path(path).is_file():
        raise MissingFileError(f"ONNX model not found: {path}")
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


class OrtDetector:
    """Callable: ``[B, C, S, S]`` float32 -> (boxes, scores, labels, valid)."""

    def __init__(self, path: str | Path, *, threads: int | None = None, memory_arena: bool = True,
                 spinning: bool = True, optimization: str = "all") -> None:
        self.path = Path(path)
        self.session = ort_session(path, threads=threads, memory_arena=memory_arena, spinning=spinning,
                                   optimization=optimization)
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, batch: np.ndarray) -> RawOutput:
        out = self.session.run(self.output_names, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})
        return tuple(out)  # type: ignore[return-value]


class OpenVinoDetector:
    """An ONNX file (FP32 or INT8 QDQ) compiled by OpenVINO's CPU plugin, as the same callable.

    precision: ``f32`` or ``bf16`` (OpenVINO's inference precision hint; bf16 needs
    AVX512-BF16 or AMX, else the plugin stays in f32).  The model is reshaped to the
    batch of each call on first sight (OpenVINO compiles static shapes fastest).  ``profile``:
    OpenVINO's per-layer counters (PERF_COUNT), read back with :meth:`layer_times`.
    """

    def __init__(self, path: str | Path, *, threads: int | None = None, precision: str = "f32", profile: bool = False) -> None:
        try:
            import openvino as ov
        except ImportError as exc:
            raise ImportError(f"OpenVINO is not installed ({exc}); pip install openvino") from exc
        if precision not in OPENVINO_PRECISIONS:
            raise InvalidOptionError(f"unknown OpenVINO precision {precision!r}; choose one of: {', '.join(OPENVINO_PRECISIONS)}")
        if not Path(path).is_file():
            raise MissingFileError(f"ONNX model not found: {path}")
        self.path, self.precision = Path(path), precision
        self._core = ov.Core()
        self._model = self._core.read_model(str(path))
        self._config = {"INFERENCE_NUM_THREADS": int(threads or os.cpu_count() or 1), "PERFORMANCE_HINT": "LATENCY",
                        "INFERENCE_PRECISION_HINT": precision, "NUM_STREAMS": 1, "PERF_COUNT": "YES" if profile else "NO"}
        self._compiled: dict[int, object] = {}
        self._lock = threading.Lock()
        self._local = threading.local()  # an infer request is not thread-safe: one per thread and batch size
        self.output_names = [o.get_any_name() for o in self._model.outputs]

    def _request(self, batch: int):
        requests = self._local.__dict__.setdefault("requests", {})
        if batch not in requests:
            with self._lock:
                if batch not in self._compiled:
                    model = self._model.clone()
                    shape = list(model.inputs[0].get_partial_shape())
                    model.reshape({model.inputs[0].get_any_name(): [batch, *[int(str(d)) for d in shape[1:]]]})
                    self._compiled[batch] = self._core.compile_model(model, "CPU", self._config)
                requests[batch] = self._compiled[batch].create_infer_request()
        return requests[batch]

    def prepare(self, batch_sizes) -> None:
        """Compile (and run once on zeros) the model for each batch size now, not on first sight: a
        first sight costs ~0.3 s on the cpu-demo model, which a server pays inside a request the first
        time dynamic batching forms that size (seen as p50 284 ms at concurrency 4)."""
        shape = [int(str(d)) for d in list(self._model.inputs[0].get_partial_shape())[1:]]
        for size in batch_sizes:
            self(np.zeros((int(size), *shape), np.float32))

    def __call__(self, batch: np.ndarray) -> RawOutput:
        request = self._request(int(batch.shape[0]))
        request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
        # copies: the request's output buffers are reused by its next call
        return tuple(np.array(request.get_output_tensor(i).data) for i in range(len(self.output_names)))  # type: ignore[return-value]

    def layer_times(self, batch: int = 1) -> list[tuple[str, str, float]]:
        """(op type, kernel, ms) of every executed layer of this thread's last call at ``batch``
        (needs ``profile=True``; OpenVINO's PERF_COUNT: op types after its own fusions)."""
        if self._config["PERF_COUNT"] != "YES":
            raise InvalidOptionError("layer times need OpenVinoDetector(..., profile=True)")
        info = self._request(batch).get_profiling_info()
        return [(p.node_type, p.exec_type, p.real_time.total_seconds() * 1e3) for p in info
                if p.status == p.Status.EXECUTED]
