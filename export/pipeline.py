"""The in-process reference pipeline: the Triton ensemble's three steps in one process.

:class:`Pipeline` chains ``cxr`` decode + preprocess -> a detector (any callable
``[B, C, S, S]`` -> raw output, see :mod:`cxr.export.runtime`) -> ``cxr``
postprocess.  Parity checks, the benchmarks and the e2e tests use it as the
reference the served ensemble must equal, so it does exactly what the three
Triton models do, letterbox record round-trip through float32 included.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from cxr.boxes import LetterboxRecord
from cxr.imaging import DecodedImage, decode_image
from cxr.postprocess import DetectionArrays, PostprocessConfig, postprocess
from cxr.preprocess import PreprocessConfig, preprocess_batch

RawOutput = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # boxes, scores, labels, valid


def split_raw(raw: RawOutput) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, int]]:
    """Batched raw output -> one (boxes, scores, labels, valid) per image."""
    boxes, scores, labels, valid = raw
    return [(boxes[i], scores[i], labels[i], int(valid[i])) for i in range(boxes.shape[0])]


class Pipeline:
    """decode -> preprocess -> detector -> postprocess, in process."""

    def __init__(self, detector: Callable[[np.ndarray], RawOutput], preprocess_config: PreprocessConfig,
                 postprocess_config: PostprocessConfig = PostprocessConfig()) -> None:
        self.detector = detector
        self.pre = preprocess_config
        self.post = postprocess_config

    def prepare(self, images: Sequence) -> tuple[np.ndarray, list[LetterboxRecord]]:
        """Studies (anything :func:`~cxr.imaging.decode_image` takes) -> ``[B, C, S, S]`` and records."""
        decoded = [im if isinstance(im, DecodedImage) else decode_image(im) for im in images]
        batch, records = preprocess_batch(decoded, self.pre)
        # The record travels as float32 between Triton models; round-trip it here
        # too so the in-process result is bit-for-bit the served one.
        return batch, [LetterboxRecord.from_array(r.to_array()) for r in records]

    def __call__(self, images: Sequence, *, batch_size: int = 4) -> list[DetectionArrays]:
        results: list[DetectionArrays] = []
        for start in range(0, len(images), batch_size):
            batch, records = self.prepare(images[start : start + batch_size])
            for (b, s, l, v), rec in zip(split_raw(self.detector(batch)), records):
                results.append(postprocess(b, s, l, rec, self.post, valid_count=v))
        return results
