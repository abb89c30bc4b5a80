"""Triton Python model ``preprocess``: encoded study (or raw pixels) -> model input.

Adapter only: decoding and preprocessing are ``cxr.imaging`` / ``cxr.preprocess``.
A study that cannot be read fails its own request with INVALID_ARG.
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from cxr.errors import InvalidImageError
from cxr.preprocess import PreprocessConfig, preprocess
from cxr.triton_models import decode_request_image, error_response, model_parameters


class TritonPythonModel:
    def initialize(self, args):
        params = model_parameters(args["model_config"])
        self.config = PreprocessConfig.from_dict(params["preprocess"])

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self._one(request))
            except (InvalidImageError, ValueError) as exc:
                responses.append(error_response(pb_utils, str(exc)))
            except Exception as exc:  # a bug in cxr, not in the study: fail this request only, say so
                responses.append(error_response(
                    pb_utils, f"internal error in preprocess ({type(exc).__name__}: {exc})", "INTERNAL"))
        return responses

    def _one(self, request):
        params = json.loads(request.parameters() or "{}")
        data = pb_utils.get_input_tensor_by_name(request, "IMAGE_BYTES")
        pixels = pb_utils.get_input_tensor_by_name(request, "PIXELS")
        data = None if data is None else data.as_numpy().reshape(-1)
        pixels = None if pixels is None else pixels.as_numpy()
        batch = len(data) if data is not None else len(pixels)
        images, records = [], []
        for i in range(batch):
            raw = None if data is None else bytes(data[i])
            image = decode_request_image(raw, None if pixels is None else pixels[i], params)
            x, record = preprocess(image, self.config)
            images.append(x)
            records.append(record.to_array())
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("IMAGES", np.stack(images)),
            pb_utils.Tensor("RECORD", np.stack(records)),
        ])
