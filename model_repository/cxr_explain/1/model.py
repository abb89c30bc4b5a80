"""Triton Python model ``cxr_explain``: a study -> its detections and one D-RISE saliency map per detection.

Adapter only: decoding, preprocessing, postprocessing and D-RISE are ``cxr.serving.explain``
(``cxr.saliency``); tensor names come from ``cxr.contract``.  The unmasked image and then
the masked copies go, in batches, to the ``detector`` model by Business Logic Scripting
(``async_exec``: the next batch is masked while the detector runs one; its dynamic batcher
packs them with other traffic).  A model clients call, not an ensemble step: in Triton 2.51
``request.is_cancelled()`` stays False inside an ensemble step (measured), and a client that
gives up on seconds of masked passes must stop them.  A cancelled request, a passed timeout
(``request.timeout()``), a bad study or parameter fails only its own request
(``cxr.serving.boundary.respond``).  Request parameters: ``score_threshold``,
``iou_threshold``, ``top_k`` (as for ``cxr_detector``), ``saliency_masks``,
``saliency_grid``, ``saliency_seed``; the defaults are stamped into this config.
"""

import asyncio

import triton_python_backend_utils as pb_utils

from cxr.contract import DETECTOR_INPUT, EXPLAIN, IMAGE_BYTES, PIXELS, RAW_OUTPUTS, Step
from cxr.serving.allocator import keep_heap
from cxr.serving.boundary import StepFailed, model_parameters, request_parameters, respond
from cxr.serving.explain import ExplainerSettings, Watch, explain_request


class TritonPythonModel:
    def initialize(self, args):
        keep_heap()  # the stub's buffers stay mapped between requests (cxr.serving.allocator)
        self.settings = ExplainerSettings.from_parameters(model_parameters(args["model_config"]))

    def execute(self, requests):
        return respond(pb_utils, requests, self._one, step=EXPLAIN)

    def _one(self, request):
        data = pb_utils.get_input_tensor_by_name(request, IMAGE_BYTES.name)
        pixels = pb_utils.get_input_tensor_by_name(request, PIXELS.name)
        watch = Watch(request.is_cancelled, request.timeout())
        return asyncio.run(explain_request(None if data is None else data.as_numpy().reshape(-1),
                                           None if pixels is None else pixels.as_numpy(), request_parameters(request),
                                           self.settings, self._detect, watch))

    @staticmethod
    async def _detect(batch):
        request = pb_utils.InferenceRequest(model_name=Step.DETECTOR.value, requested_output_names=list(RAW_OUTPUTS),
                                            inputs=[pb_utils.Tensor(DETECTOR_INPUT, batch)])
        response = await request.async_exec()
        if response.has_error():
            raise StepFailed(f"the {Step.DETECTOR} model failed on a batch of {len(batch)} images: "
                             f"{response.error().message()}", "UNAVAILABLE")
        return tuple(pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in RAW_OUTPUTS)
