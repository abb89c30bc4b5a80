"""What ``cxr bench`` names: the backends it compares, the runtime variants beside them, a row's status.

Closed vocabularies (:class:`~cxr.vocab.ClosedVocabulary`): each member is its string,
the name in ``--backends`` and in report.json, and an unknown name raises
:class:`~cxr.errors.InvalidOptionError` listing the valid ones.
"""

from __future__ import annotations

from dataclasses import dataclass

from cxr.contract import Artifact, Precision
from cxr.vocab import ClosedVocabulary

__all__ = ["BenchBackend", "BenchStatus", "RuntimeVariant"]


class BenchBackend(ClosedVocabulary, label="benchmark backend"):
    """The contract's backends: PyTorch, each exported artifact, the served ensemble; in report order."""

    PYTORCH = "pytorch"  # the eager serving graph: the parity reference
    ONNX = "onnx"
    ONNX_INT8 = "onnx-int8"
    TENSORRT = "tensorrt"
    TRITON = "triton"  # the served ensemble, encoded bytes over gRPC
    TRITON_SHM = "triton-shm"  # the served ensemble, raw pixels through system shared memory

    @property
    def artifact(self) -> Artifact | None:
        return next((a for a in Artifact if a.backend == self.value), None)

    @property
    def in_process(self) -> bool:
        return self not in (BenchBackend.TRITON, BenchBackend.TRITON_SHM)

    def precision(self, served: Precision | str = Precision.FP32) -> Precision:
        """What it computes in; the served ones run the server's CPU precision ``served``."""
        if self.artifact is not None:
            return self.artifact.precision
        return Precision.FP32 if self is BenchBackend.PYTORCH else Precision(served)


@dataclass(frozen=True)
class _VariantRow:
    engine: str  # "torch" (cxr.export.torch_detector) or "openvino" (cxr.serving.runtime)
    mode: str  # TorchDetector's mode, or OpenVINO's inference precision
    artifact: Artifact | None  # the ONNX file it runs; None: the checkpoint
    precision: str  # what it computes in: fp32 | bf16 | int8 (bf16 is no artifact's precision)
    follows: BenchBackend  # the backend it is listed after in the report


class RuntimeVariant(ClosedVocabulary, label="runtime variant"):
    """Other in-process runtimes of the same model: rows of the report, not serving options.

    One becomes a serving option only when it is faster at equal parity
    (benchmarks/README.md, "Runtimes").
    """

    PYTORCH_BF16 = "pytorch-bf16"  # channels-last bf16 network
    PYTORCH_AUTOCAST = "pytorch-autocast"  # plain bf16 autocast
    OPENVINO = "openvino"  # OpenVINO's CPU plugin on the FP32 ONNX file
    OPENVINO_BF16 = "openvino-bf16"  # the same file at bf16 inference precision
    OPENVINO_INT8 = "openvino-int8"  # the INT8 QDQ model
    OPENVINO_INT8_BF16 = "openvino-int8-bf16"  # the INT8 QDQ model, its unquantized layers at bf16

    @property
    def _row(self) -> _VariantRow:
        return _VARIANTS[self]

    @property
    def engine(self) -> str:
        return self._row.engine

    @property
    def mode(self) -> str:
        return self._row.mode

    @property
    def artifact(self) -> Artifact | None:
        return self._row.artifact

    @property
    def precision(self) -> str:
        return self._row.precision

    @property
    def follows(self) -> BenchBackend:
        return self._row.follows


_VARIANTS = {
    RuntimeVariant.PYTORCH_BF16: _VariantRow("torch", "bf16", None, "bf16", BenchBackend.PYTORCH),
    RuntimeVariant.PYTORCH_AUTOCAST: _VariantRow("torch", "autocast", None, "bf16", BenchBackend.PYTORCH),
    RuntimeVariant.OPENVINO: _VariantRow("openvino", "f32", Artifact.ONNX, "fp32", BenchBackend.ONNX_INT8),
    RuntimeVariant.OPENVINO_BF16: _VariantRow("openvino", "bf16", Artifact.ONNX, "bf16", BenchBackend.ONNX_INT8),
    RuntimeVariant.OPENVINO_INT8: _VariantRow("openvino", "f32", Artifact.ONNX_INT8, "int8", BenchBackend.ONNX_INT8),
    RuntimeVariant.OPENVINO_INT8_BF16: _VariantRow("openvino", "bf16", Artifact.ONNX_INT8, "int8", BenchBackend.ONNX_INT8),
}


class BenchStatus(ClosedVocabulary, label="backend status"):
    """A report row's ``status``."""

    OK = "ok"  # measured, and within the export parity tolerance (or untrained: speed only)
    FAILED_PARITY = "failed-parity"  # measured, outside the tolerance: the reason says which figure
    UNAVAILABLE = "unavailable"  # cannot run here: the reason says why (no GPU, not exported, ...)
