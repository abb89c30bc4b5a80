"""Triton Python model ``preprocess``: encoded study (or raw pixels) -> model input.

Adapter only: decoding and preprocessing are ``cxr.decode.image`` / ``cxr.preprocess``;
tensor names come from ``cxr.contract``; ``cxr.serving.boundary.respond`` answers each
request on its own (a study that cannot be read fails its request with INVALID_ARG).
"""

import triton_python_backend_utils as pb_utils

from cxr.contract import IMAGE_BYTES, PIXELS, ConfigKey, Step, preprocess_outputs
from cxr.preprocess import PreprocessConfig
from cxr.serving.allocator import keep_heap
from cxr.serving.boundary import model_parameters, request_parameters, respond
from cxr.serving.steps import decode_request_image, prepare_batch


class TritonPythonModel:
    def initialize(self, args):
        keep_heap()  # the stub's buffers stay mapped between requests (cxr.serving.allocator)
        params = model_parameters(args["model_config"])
        self.config = PreprocessConfig.from_dict(params[ConfigKey.PREPROCESS])
        self.images, self.record = (t.name for t in preprocess_outputs(self.config.size, self.config.channels))

    def execute(self, requests):
        return respond(pb_utils, requests, self._one, step=Step.PREPROCESS)

    def _one(self, request):
        params = request_parameters(request)
        data = pb_utils.get_input_tensor_by_name(request, IMAGE_BYTES.name)
        pixels = pb_utils.get_input_tensor_by_name(request, PIXELS.name)
        data = None if data is None else data.as_numpy().reshape(-1)
        pixels = None if pixels is None else pixels.as_numpy()
        batch = len(data) if data is not None else len(pixels)
        decoded = [decode_request_image(None if data is None else bytes(data[i]), None if pixels is None else pixels[i],
                                        params) for i in range(batch)]
        images, records = prepare_batch(decoded, self.config)
        return {self.images: images, self.record: records}
