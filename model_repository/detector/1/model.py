"""Triton Python model ``detector`` for the embedded CPU server: ONNX Runtime.

Parameter ``runtime: openvino`` runs the same ONNX file with OpenVINO's CPU plugin
instead (needs the ``openvino`` package).  The NGC GPU server uses the native
``onnxruntime_onnx`` / ``tensorrt_plan`` backends
instead (``configs/gpu-*.pbtxt``); inputs and outputs are identical (``cxr.contract``).
The requests of a dynamic batch run as one call
(``cxr.serving.boundary.respond_batched``).  ``cxr serve`` sets the path it chose
(``cxr.serving.paths``: ``--path``, by default the fastest that passed parity) in
``CXR_DETECTOR_RUNTIME`` (``onnxruntime`` | ``openvino``) and ``CXR_DETECTOR_PRECISION``
(``fp32`` | ``bf16`` | ``int8``: the INT8 file, or OpenVINO's BF16 inference precision on the FP32 one);
they override the config's parameters.
"""

import json
import os
from pathlib import Path

import triton_python_backend_utils as pb_utils

from cxr.contract import DETECTOR_INPUT, PRECISION_ENV, SEGMENT_RAW_OUTPUTS, Artifact, ConfigKey, DetectorRuntime, Precision, Step
from cxr.serving.paths import RUNTIME_ENV
from cxr.serving.runtime import OpenVinoDetector, OrtDetector, openvino_precision
from cxr.serving.allocator import keep_heap
from cxr.serving.boundary import model_parameters, respond_batched


class TritonPythonModel:
    def initialize(self, args):
        keep_heap()  # the stub's buffers stay mapped between requests (cxr.serving.allocator)
        config = json.loads(args["model_config"])
        params = model_parameters(config)
        precision = Precision(os.environ.get(PRECISION_ENV) or params.get(ConfigKey.PRECISION, Precision.FP32))
        runtime = DetectorRuntime(os.environ.get(RUNTIME_ENV) or params.get(ConfigKey.RUNTIME, DetectorRuntime.ONNXRUNTIME))
        if precision in (Precision.BF16, Precision.INT8_BF16) and runtime is not DetectorRuntime.OPENVINO:
            raise ValueError(f"{precision} runs on OpenVINO only (path openvino-{precision})")
        artifact = Artifact.for_cpu(precision)
        key = ConfigKey.INT8_MODEL_FILE if artifact is Artifact.ONNX_INT8 else ConfigKey.MODEL_FILE
        path = Path(args["model_repository"]) / args["model_version"] / params.get(key, artifact.file)
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run `cxr export {artifact} ...` first")
        threads = int(params.get(ConfigKey.INTRA_OP_THREADS) or 0) or None
        # ONNX Runtime's CPU arena stays on by default: under load it ratchets the stub's RSS
        # up in steps (~+120 MB over a 2000-request soak) but off, each call is 20-50% slower
        # (benchmarks/README.md, "Soak").  Parameter cpu_mem_arena=false trades speed for flat RSS.
        arena = str(params.get(ConfigKey.CPU_MEM_ARENA, "true")).lower() not in ("0", "false", "no", "off")
        # Busy-waiting ORT threads take cycles from the other stubs on the same cores (benchmarks/README.md).
        spinning = str(params.get(ConfigKey.INTRA_OP_SPINNING, "1")).lower() not in ("0", "false", "no", "off")
        self.precision = precision
        if runtime is DetectorRuntime.OPENVINO:
            self.detector = OpenVinoDetector(path, threads=threads, precision=openvino_precision(precision))
            # Every batch size dynamic batching can form, compiled now: on first sight it costs a request ~0.3 s.
            self.detector.prepare(range(1, int(config.get("max_batch_size", 1)) + 1))
            pb_utils.Logger.log_info(f"detector: OpenVINO CPU {precision} ({path.name})")
            return
        self.detector = OrtDetector(path, threads=threads, memory_arena=arena, spinning=spinning)
        enabled = self.detector.session.get_session_options().enable_cpu_mem_arena
        pb_utils.Logger.log_info(f"detector: ONNX Runtime {precision}, cpu memory arena {'on' if enabled else 'off'}, "
                                 f"spinning {'on' if spinning else 'off'}")

    def execute(self, requests):
        return respond_batched(pb_utils, requests, self._images, self._run, step=Step.DETECTOR)

    @staticmethod
    def _images(request):
        return pb_utils.get_input_tensor_by_name(request, DETECTOR_INPUT).as_numpy()

    def _run(self, batch):
        # valid is [n]; the config reshapes it to Triton's [n, 1]
        return dict(zip(SEGMENT_RAW_OUTPUTS, self.detector(batch)))  # a Mask R-CNN adds masks; a detector has four
