"""Triton Python model ``detector`` for the embedded CPU server: ONNX Runtime.

The NGC GPU server uses the native ``onnxruntime_onnx`` / ``tensorrt_plan`` backends
instead (``configs/gpu-*.pbtxt``); inputs and outputs are identical.  The requests
of a dynamic batch run as one ONNX Runtime call.  ``CXR_DETECTOR_PRECISION``
(``fp32`` | ``int8``, set by ``cxr serve --precision``) picks the ONNX file.
"""

import os
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from cxr.export.runtime import OrtDetector
from cxr.triton_models import model_parameters


class TritonPythonModel:
    def initialize(self, args):
        params = model_parameters(args["model_config"])
        precision = os.environ.get("CXR_DETECTOR_PRECISION") or params.get("precision", "fp32")
        if precision not in ("fp32", "int8"):
            raise ValueError(f"CXR_DETECTOR_PRECISION must be fp32 or int8, got {precision!r}")
        filename = params["int8_model_file"] if precision == "int8" else params["model_file"]
        path = Path(args["model_repository"]) / args["model_version"] / filename
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run `cxr export {'onnx-int8' if precision == 'int8' else 'onnx'} ...` first")
        threads = int(params.get("intra_op_threads") or 0) or None
        # ONNX Runtime's CPU arena stays on by default: under load it ratchets the stub's RSS
        # up in steps (~+120 MB over a 2000-request soak) but off, each call is 20-50% slower
        # (benchmarks/README.md, "Soak").  Parameter cpu_mem_arena=false trades speed for flat RSS.
        arena = str(params.get("cpu_mem_arena", "true")).lower() not in ("0", "false", "no", "off")
        self.detector = OrtDetector(path, threads=threads, memory_arena=arena)
        self.precision = precision
        enabled = self.detector.session.get_session_options().enable_cpu_mem_arena
        pb_utils.Logger.log_info(f"detector: ONNX Runtime {precision}, cpu memory arena {'on' if enabled else 'off'}")

    def execute(self, requests):
        inputs = [pb_utils.get_input_tensor_by_name(r, "images").as_numpy() for r in requests]
        boxes, scores, labels, valid = self.detector(np.concatenate(inputs))
        responses, start = [], 0
        for x in inputs:
            end = start + len(x)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("boxes", boxes[start:end]),
                pb_utils.Tensor("scores", scores[start:end]),
                pb_utils.Tensor("labels", labels[start:end]),
                pb_utils.Tensor("valid", valid[start:end]),  # [n]; the config reshapes to [n, 1]
            ]))
            start = end
        return responses
