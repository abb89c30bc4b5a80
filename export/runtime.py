"""Detectors in process: the exported graph in ONNX Runtime and the eager PyTorch graph.

Both are callables ``[B, C, S, S]`` float32 -> (boxes, scores, labels, valid), the
detector step of :class:`cxr.export.pipeline.Pipeline`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cxr.errors import InvalidOptionError, MissingFileError
from cxr.export.pipeline import RawOutput


def ort_session(path: str | Path, *, threads: int | None = None, optimization: str = "all",
                memory_arena: bool = True):
    """An ``onnxruntime.InferenceSession`` on the CPU with graph optimisations.

    threads: intra-op threads (default: all cores; Triton instances should set it to
    cores / instances so they do not oversubscribe).
    memory_arena: ONNX Runtime's CPU memory arena (its default).  The arena keeps every
    block it ever allocated, so a long-lived server seeing many batch sizes and
    data-dependent detection shapes ratchets up in steps; off, tensors go to malloc and
    are returned, at 20-50% more time per call (benchmarks/README.md, "Soak").
    """
    import onnxruntime as ort

    levels = {
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    if optimization not in levels:
        raise InvalidOptionError(f"unknown optimization level {optimization!r}; choose one of: {', '.join(levels)}")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = levels[optimization]
    opts.intra_op_num_threads = threads or os.cpu_count() or 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3  # warnings about unused initializers etc. are noise here
    opts.enable_cpu_mem_arena = memory_arena
    if not Path(path).is_file():
        raise MissingFileError(f"ONNX model not found: {path}")
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


class OrtDetector:
    """Callable: ``[B, C, S, S]`` float32 -> (boxes, scores, labels, valid)."""

    def __init__(self, path: str | Path, *, threads: int | None = None, memory_arena: bool = True) -> None:
        self.path = Path(path)
        self.session = ort_session(path, threads=threads, memory_arena=memory_arena)
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, batch: np.ndarray) -> RawOutput:
        out = self.session.run(self.output_names, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})
        return tuple(out)  # type: ignore[return-value]


class TorchDetector:
    """The eager PyTorch serving graph as the same callable (the parity reference)."""

    def __init__(self, ckpt) -> None:
        import torch

        from cxr.export.graph import ServingGraph

        self._torch = torch
        self.graph = ServingGraph.from_checkpoint(ckpt)

    def __call__(self, batch: np.ndarray) -> RawOutput:
        with self._torch.no_grad():
            out = self.graph(self._torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))
        return tuple(t.numpy() for t in out)  # type: ignore[return-value]
