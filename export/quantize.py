"""ONNX FP32 -> ONNX INT8 (static, QDQ) for CPU inference with ONNX Runtime.

Only the compute-heavy ops are quantized (Conv, MatMul, Gemm: backbone, FPN, RPN
and box heads).  The arithmetic around them -- anchor decoding, NMS, ROI Align,
softmax, top-k -- stays FP32, and so do the two final layers of the box predictor
(class scores and box regression), where 8-bit steps would move scores and box
edges visibly.  Weights are per-channel int8; activations uint8 (the U8S8 kernels
that x86 CPUs run fastest), calibrated with MinMax on preprocessed training images.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")
# Node-name fragments kept in FP32 (torch.onnx names nodes after module paths).
SENSITIVE_NODES = ("box_predictor",)


class _Calibration:
    """onnxruntime CalibrationDataReader over preprocessed batches of one image."""

    def __init__(self, input_name: str, batches: Sequence[np.ndarray]) -> None:
        self.input_name = input_name
        self._it: Iterator[np.ndarray] = iter(batches)

    def get_next(self):
        batch = next(self._it, None)
        return None if batch is None else {self.input_name: batch}

    def rewind(self) -> None:  # some onnxruntime versions call it
        pass


def sensitive_nodes(model, fragments: Sequence[str] = SENSITIVE_NODES) -> list[str]:
    return [n.name for n in model.graph.node if n.op_type in QUANTIZED_OPS and any(f in n.name for f in fragments)]


def quantize_int8(
    fp32_path: str | Path,
    out_path: str | Path,
    calibration: Sequence[np.ndarray],
    *,
    per_channel: bool = True,
    reduce_range: bool = True,
    exclude: Sequence[str] = SENSITIVE_NODES,
) -> Path:
    """Quantize ``fp32_path`` into ``out_path`` using ``calibration`` inputs ``[1, C, S, S]``.

    reduce_range: 7-bit weights.  Without AVX-512 VNNI, x86 int8 kernels accumulate
    pairs in int16 and can saturate with full 8-bit ranges; ORT recommends it there.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from cxr.export.onnx_export import read_metadata, stamp_metadata

    if not calibration:
        raise ValueError("INT8 calibration needs at least one image")
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    model = onnx.load(str(fp32_path))
    input_name = model.graph.input[0].name
    excluded = sensitive_nodes(model, exclude)
    with tempfile.TemporaryDirectory() as tmp:
        prepped = Path(tmp) / "prepped.onnx"
        try:
            quant_pre_process(str(fp32_path), str(prepped), skip_symbolic_shape=False)
        except Exception as exc:  # symbolic shape inference cannot follow NMS/top-k everywhere
            log.info("symbolic shape inference failed (%s); quantizing without it", exc)
            quant_pre_process(str(fp32_path), str(prepped), skip_symbolic_shape=True)
        quantize_static(
            str(prepped), str(out_path), _Calibration(input_name, list(calibration)),
            quant_format=QuantFormat.QDQ, op_types_to_quantize=list(QUANTIZED_OPS), nodes_to_exclude=excluded,
            per_channel=per_channel, reduce_range=reduce_range, activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
        )
    meta = read_metadata(fp32_path)
    meta.update(precision="int8", calibration_images=len(calibration), int8_excluded_nodes=excluded, reduce_range=reduce_range)
    quantized = onnx.load(str(out_path))
    stamp_metadata(quantized, meta)
    onnx.save(quantized, str(out_path))
    log.info("wrote %s (%.1f MB), %d nodes kept FP32", out_path, out_path.stat().st_size / 1e6, len(excluded))
    return out_path
