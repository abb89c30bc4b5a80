"""The in-process reference pipeline: the Triton ensemble's three steps in one process.

:class:`Pipeline` chains decode -> :func:`~cxr.serving.steps.prepare_batch` -> a detector
(any callable ``[B, C, S, S]`` -> raw output, see :mod:`cxr.serving.runtime`) ->
:func:`~cxr.serving.steps.unmap_detections`: the same two step functions the preprocess
and postprocess models call.  Parity checks, the benchmarks and the e2e tests use it as
the reference the served ensemble must equal.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import numpy as np

from cxr.decode.image import decode_image
from cxr.decode.types import DecodedImage
from cxr.postprocess import DetectionArrays, PostprocessConfig
from cxr.preprocess import PreprocessConfig
from cxr.saliency import SaliencyConfig
from cxr.serving.explain import explain_study
from cxr.serving.steps import RawOutput, prepare_batch, unmap_detections


class Pipeline:
    """decode -> preprocess -> detector -> postprocess, in process."""

    def __init__(self, detector: Callable[[np.ndarray], RawOutput], preprocess_config: PreprocessConfig,
                 postprocess_config: PostprocessConfig = PostprocessConfig()) -> None:
        self.detector = detector
        self.pre = preprocess_config
        self.post = postprocess_config

    def prepare(self, images: Sequence) -> tuple[np.ndarray, np.ndarray]:
        """Studies (anything :func:`~cxr.decode.image.decode_image` takes) -> ``[B, C, S, S]`` and records ``[B, 8]``."""
        return prepare_batch([im if isinstance(im, DecodedImage) else decode_image(im) for im in images], self.pre)

    def __call__(self, images: Sequence, *, batch_size: int = 4) -> list[DetectionArrays]:
        results: list[DetectionArrays] = []
        for start in range(0, len(images), batch_size):
            batch, records = self.prepare(images[start : start + batch_size])
            results += unmap_detections(self.detector(batch), records, self.post)
        return results

    def explain(self, image, saliency: SaliencyConfig = SaliencyConfig()) -> tuple[DetectionArrays, np.ndarray, np.ndarray]:
        """One study -> (detections, D-RISE maps ``[D, h, w]``, letterbox record ``[8]``): the
        ``cxr_explain`` model's computation in process (:func:`cxr.serving.explain.explain_study`,
        the same code), the reference the served maps must equal."""
        images, records = self.prepare([image])

        async def detect(batch: np.ndarray) -> RawOutput:
            return self.detector(batch)

        dets, maps = asyncio.run(explain_study(images[0], records[0], detect, postprocess=self.post,
                                               saliency=saliency, preprocess=self.pre))
        return dets, maps, records[0]
