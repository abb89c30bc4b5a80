"""The served explainer's steps, Triton-free: a study in, its detections and one D-RISE map each out.

``model_repository/cxr_explain/1/model.py`` reads the tensors and calls
:func:`explain_request` with a ``detect`` coroutine that sends a batch to the
``detector`` model by Business Logic Scripting; :meth:`cxr.serving.pipeline.Pipeline.explain`
calls :func:`explain_study` with the in-process detector.  Both run this same code:
the unmasked image first (its raw output through :func:`~cxr.serving.steps.unmap_detections`
gives the detections, exactly as the ``postprocess`` model does), then, when there is
something to explain, the masked copies in batches of up to :data:`~cxr.contract.MAX_BATCH`
with :data:`IN_FLIGHT` batches in flight (the next batch is masked while the detector runs
one), fed to one :class:`~cxr.saliency.DriseRun`.

A :class:`Watch` stops the work between batches when the client cancelled the request
or its timeout passed (:class:`~cxr.serving.boundary.StepFailed`, CANCELLED): only that
request fails.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from cxr.boxes import LetterboxRecord
from cxr.contract import MAX_BATCH, MODEL_VERSION, RECORD, SALIENCY, SALIENCY_OVERRIDES, ConfigKey
from cxr.errors import InvalidOptionError, InvalidRequestError
from cxr.postprocess import DetectionArrays, PostprocessConfig
from cxr.preprocess import PreprocessConfig
from cxr.saliency import DriseRun, RawOutput, SaliencyConfig
from cxr.serving.boundary import StepFailed
from cxr.serving.steps import (
    decode_request_image, detection_tensors, postprocess_overrides, prepare_batch, request_number, unmap_detections,
)

Detect = Callable[[np.ndarray], Awaitable[RawOutput]]  # [n, C, S, S] -> the detector's raw output
IN_FLIGHT = 2  # masked batches sent before the first answer is awaited: masking overlaps the detector


@dataclass(frozen=True)
class ExplainerSettings:
    """What the explainer reads from its model config once (``initialize``)."""

    preprocess: PreprocessConfig
    postprocess: PostprocessConfig
    saliency: SaliencyConfig
    class_names: tuple[str, ...]
    version: str

    @classmethod
    def from_parameters(cls, params: dict) -> ExplainerSettings:
        """From :func:`~cxr.serving.boundary.model_parameters` of the explainer's config."""
        return cls(PreprocessConfig.from_dict(params[ConfigKey.PREPROCESS]),
                   PostprocessConfig(**params[ConfigKey.POSTPROCESS]),
                   SaliencyConfig.from_dict(params.get(ConfigKey.SALIENCY, {})),
                   tuple(params[ConfigKey.CLASS_NAMES]), str(params.get(ConfigKey.MODEL_VERSION, "unknown")))


def saliency_overrides(base: SaliencyConfig, params: dict) -> SaliencyConfig:
    """Per-request ``saliency_masks`` / ``saliency_grid`` / ``saliency_seed`` over the model's defaults.

    Raises InvalidRequestError naming the parameter, what it got and what is allowed.
    """
    values = {}
    for parameter, field in SALIENCY_OVERRIDES.items():
        if parameter.name not in params:
            continue
        raw = params[parameter.name]
        if isinstance(raw, float) and not raw.is_integer():  # int(2.5) would quietly be 2
            raise InvalidRequestError(f"request parameter {parameter.name}={raw!r} must be an integer")
        values[field] = request_number(params, parameter)
    try:
        return SaliencyConfig(**{**base.to_dict(), **values})
    except InvalidOptionError as exc:
        names = {field: parameter.name for parameter, field in SALIENCY_OVERRIDES.items()}
        raise InvalidRequestError(f"bad request parameter ({', '.join(names[f] for f in values) or 'none'}): {exc}") from exc


class Watch:
    """When to stop working on a request: its client cancelled it, or its timeout passed.

    is_cancelled: the request's ``is_cancelled``; timeout_us: its ``timeout()`` (0 = none),
    counted from now (Triton does not tell the stub when the request arrived, so a
    request that queued gets that much longer).
    """

    def __init__(self, is_cancelled: Callable[[], bool], timeout_us: int = 0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.is_cancelled, self.clock = is_cancelled, clock
        self.timeout_s = max(int(timeout_us or 0), 0) / 1e6
        self.deadline = clock() + self.timeout_s if self.timeout_s else None

    def check(self, done: int, total: int) -> None:
        """Raise StepFailed (CANCELLED) if the request is to be dropped; ``done`` of ``total`` passes are in."""
        if self.is_cancelled():
            raise StepFailed(f"the client cancelled the explanation after {done} of {total} detector passes", "CANCELLED")
        if self.deadline is not None and self.clock() > self.deadline:
            raise StepFailed(f"the request's timeout of {self.timeout_s:.1f} s passed after {done} of {total} detector "
                             "passes: ask for fewer masks (saliency_masks) or allow more time", "CANCELLED")


async def explain_study(image: np.ndarray, record: np.ndarray, detect: Detect, *, postprocess: PostprocessConfig,
                        saliency: SaliencyConfig, preprocess: PreprocessConfig, watch: Watch | None = None,
                        batch_size: int = MAX_BATCH) -> tuple[DetectionArrays, np.ndarray]:
    """One preprocessed study ``[C, S, S]`` and its record ``[8]`` -> (detections in ORIGINAL
    pixels, maps ``[D, h, w]`` on the film inside the letterbox)."""
    total = 1 + saliency.masks
    if watch is not None:
        watch.check(0, total)
    dets = unmap_detections(await detect(image[None]), record[None], postprocess)[0]
    run = DriseRun(image, LetterboxRecord.from_array(record), dets, saliency, preprocess)
    pending: set[asyncio.Future] = set()

    async def one(part: slice) -> None:
        run.add(part, await detect(run.masked(part)))

    try:
        for part in run.batches(batch_size):
            if watch is not None:
                watch.check(1 + run.answered, total)
            if len(pending) >= IN_FLIGHT:
                finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    task.result()  # the first failure stops the run
            pending.add(asyncio.ensure_future(one(part)))
        await asyncio.gather(*pending)
        pending = set()
    finally:
        if pending:  # a failure: let the batches already sent come back before the request is answered
            await asyncio.wait(pending)
            for task in pending:
                task.exception()  # retrieved: the first failure is the one raised
    return dets, run.maps()


def explanation_tensors(dets: DetectionArrays, maps: np.ndarray, record: np.ndarray,
                        settings: ExplainerSettings) -> dict[str, np.ndarray]:
    """The explainer's outputs for one study (batch of 1): the detection tensors of the
    ``postprocess`` model, ``SALIENCY [1, D, h, w]`` and ``RECORD [1, 8]``."""
    out = detection_tensors([dets], settings.class_names)
    out[MODEL_VERSION.name] = np.full((1, 1), settings.version.encode(), dtype=object)
    out[SALIENCY.name] = np.ascontiguousarray(maps[None], dtype=np.float32)
    out[RECORD.name] = np.asarray(record, np.float32).reshape(1, -1)
    return out


async def explain_request(data: np.ndarray | None, pixels: np.ndarray | None, params: dict, settings: ExplainerSettings,
                          detect: Detect, watch: Watch | None = None) -> dict[str, np.ndarray]:
    """One request of the explainer: IMAGE_BYTES ``[1]`` (object) or PIXELS ``[1, H, W]`` -> its outputs.

    Request parameters are checked before the study is decoded (a bad one costs nothing).
    """
    postprocess = postprocess_overrides(settings.postprocess, params)
    saliency = saliency_overrides(settings.saliency, params)
    count = len(data) if data is not None else (len(pixels) if pixels is not None else 0)
    if count > 1:  # the config's max_batch_size is 1, so Triton refuses it first; a direct caller may not
        raise InvalidRequestError(f"one study per explanation request, got {count}: send them one by one")
    image = decode_request_image(None if data is None else bytes(data[0]), None if pixels is None else pixels[0], params)
    images, records = prepare_batch([image], settings.preprocess)
    dets, maps = await explain_study(images[0], records[0], detect, postprocess=postprocess, saliency=saliency,
                                     preprocess=settings.preprocess, watch=watch)
    return explanation_tensors(dets, maps, records[0], settings)
