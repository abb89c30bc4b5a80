"""Triton Python model ``postprocess``: raw candidates -> detections in original pixels.

Adapter only: NMS, thresholds and box un-mapping are ``cxr.postprocess``; tensor
names come from ``cxr.contract``.  Request parameters ``score_threshold``,
``iou_threshold`` and ``top_k`` override the defaults stamped into this model's
config by ``cxr export``; a malformed one fails its request with INVALID_ARG.
"""

import numpy as np
import triton_python_backend_utils as pb_utils

from cxr.contract import MODEL_VERSION, RAW_OUTPUTS, RECORD, ConfigKey, Step
from cxr.postprocess import PostprocessConfig
from cxr.serving.allocator import keep_heap
from cxr.serving.boundary import model_parameters, request_parameters, respond
from cxr.serving.steps import detection_tensors, postprocess_overrides, unmap_detections


class TritonPythonModel:
    def initialize(self, args):
        keep_heap()  # the stub's buffers stay mapped between requests (cxr.serving.allocator)
        params = model_parameters(args["model_config"])
        self.config = PostprocessConfig(**params[ConfigKey.POSTPROCESS])
        self.class_names = list(params[ConfigKey.CLASS_NAMES])
        self.version = str(params.get(ConfigKey.MODEL_VERSION, "unknown")).encode()

    def execute(self, requests):
        return respond(pb_utils, requests, self._one, step=Step.POSTPROCESS)

    def _one(self, request):
        config = postprocess_overrides(self.config, request_parameters(request))
        t = {n: pb_utils.get_input_tensor_by_name(request, n).as_numpy() for n in (*RAW_OUTPUTS, RECORD.name)}
        dets = unmap_detections(tuple(t[n] for n in RAW_OUTPUTS), t[RECORD.name], config)
        out = detection_tensors(dets, self.class_names)
        out[MODEL_VERSION.name] = np.full((len(dets), 1), self.version, dtype=object)
        return out
