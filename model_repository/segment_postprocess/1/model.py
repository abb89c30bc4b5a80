"""Triton Python model ``segment_postprocess``: a Mask R-CNN's raw candidates -> detections and
their masks in the ORIGINAL image's pixels, in the wire form of ``cxr.contract`` (``cxr_segment``'s last step).

Adapter only: NMS, thresholds and box un-mapping are ``cxr.postprocess``; pasting and thresholding
the 28 x 28 probabilities are ``cxr.masks`` (via ``cxr.serving.steps.unmap_detections``); the wire
form is ``cxr.masks.CroppedMasks.to_wire`` (``cxr.serving.steps.mask_tensors``).  Request parameters
as for ``postprocess``; a malformed one, or masks above the per-study bound, fails its request with INVALID_ARG.
"""

import numpy as np
import triton_python_backend_utils as pb_utils

from cxr.contract import MODEL_VERSION, RECORD, SEGMENT_POSTPROCESS, SEGMENT_RAW_OUTPUTS, ConfigKey
from cxr.postprocess import PostprocessConfig
from cxr.serving.allocator import keep_heap
from cxr.serving.boundary import model_parameters, request_parameters, respond
from cxr.serving.steps import detection_tensors, mask_tensors, postprocess_overrides, unmap_detections


class TritonPythonModel:
    def initialize(self, args):
        keep_heap()  # the stub's buffers stay mapped between requests (cxr.serving.allocator)
        params = model_parameters(args["model_config"])
        self.config = PostprocessConfig(**params[ConfigKey.POSTPROCESS])
        self.class_names = list(params[ConfigKey.CLASS_NAMES])
        self.version = str(params.get(ConfigKey.MODEL_VERSION, "unknown")).encode()

    def execute(self, requests):
        return respond(pb_utils, requests, self._one, step=SEGMENT_POSTPROCESS)

    def _one(self, request):
        config = postprocess_overrides(self.config, request_parameters(request))
        t = {n: pb_utils.get_input_tensor_by_name(request, n).as_numpy() for n in (*SEGMENT_RAW_OUTPUTS, RECORD.name)}
        dets = unmap_detections(tuple(t[n] for n in SEGMENT_RAW_OUTPUTS), t[RECORD.name], config)
        out = detection_tensors(dets, self.class_names)
        out.update(mask_tensors(dets))
        out[MODEL_VERSION.name] = np.full((len(dets), 1), self.version, dtype=object)
        return out
