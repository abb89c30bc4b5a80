"""Triton Python model ``postprocess``: raw candidates -> detections in original pixels.

Adapter only: NMS, thresholds and box un-mapping are ``cxr.postprocess``.  Request
parameters ``score_threshold``, ``iou_threshold`` and ``top_k`` override the
defaults stamped into this model's config by ``cxr export``.
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from cxr.boxes import LetterboxRecord
from cxr.postprocess import PostprocessConfig, postprocess
from cxr.triton_models import detection_tensors, error_response, model_parameters, postprocess_overrides


class TritonPythonModel:
    def initialize(self, args):
        params = model_parameters(args["model_config"])
        self.config = PostprocessConfig(**params["postprocess"])
        self.class_names = list(params["class_names"])
        self.version = str(params.get("model_version", "unknown")).encode()

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                config = postprocess_overrides(self.config, json.loads(request.parameters() or "{}"))
            except ValueError as exc:
                responses.append(error_response(pb_utils, str(exc)))
                continue
            t = {n: pb_utils.get_input_tensor_by_name(request, n).as_numpy() for n in ("boxes", "scores", "labels", "valid", "RECORD")}
            dets = [
                postprocess(t["boxes"][i], t["scores"][i], t["labels"][i], LetterboxRecord.from_array(t["RECORD"][i]),
                            config, valid_count=int(t["valid"][i].reshape(-1)[0]))
                for i in range(len(t["boxes"]))
            ]
            out = detection_tensors(dets, self.class_names)
            out["MODEL_VERSION"] = np.full((len(dets), 1), self.version, dtype=object)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(k, v) for k, v in out.items()]))
        return responses
