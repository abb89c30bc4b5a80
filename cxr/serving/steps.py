"""The numeric steps of the served models between the wire and ``cxr``: a request's study in, its detections out.

The Triton ``model.py`` adapters and the in-process :class:`~cxr.serving.pipeline.Pipeline`
call these same functions, so the two cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from cxr.contract import (
    BITS_STORED, BOXES, BOXES_MM, IMAGE_BYTES, LABELS, MASK_BITS, MASK_GRID, MASK_RECTS, MAX_MASK_BYTES, MAX_REQUEST_BYTES,
    PIXELS, POSTPROCESS_OVERRIDES, SCORE_THRESHOLD, SCORES, SPACING_COL_MM, SPACING_ROW_MM, TOP_K,
)
from cxr.decode.image import decode_image, decode_pixels
from cxr.decode.types import DecodedImage
from cxr.errors import InvalidImageError, InvalidRequestError
from cxr.boxes import LetterboxRecord
from cxr.contract import RAW_OUTPUTS
from cxr.masks import paste_in_original
from cxr.postprocess import DetectionArrays, PostprocessConfig, postprocess, postprocess_indexed
from cxr.preprocess import PreprocessConfig, preprocess_batch

# boxes, scores, labels, valid -- and a Mask R-CNN's masks [B, K, M, M]: the graph's outputs (cxr.contract.raw_outputs)
RawOutput = tuple[np.ndarray, ...]


def decode_request_image(data: bytes | None, pixels: np.ndarray | None, params: dict) -> DecodedImage:
    """One study from a request: encoded bytes (PNG/JPEG/DICOM) or a raw UINT16 array.

    Request parameters: ``bits_stored`` (for pixels), ``spacing_row_mm`` /
    ``spacing_col_mm`` (for pixels; DICOM carries its own).
    """
    if (data is None) == (pixels is None):
        raise InvalidImageError(
            f"send exactly one of {IMAGE_BYTES.name} (encoded PNG/JPEG/DICOM) or {PIXELS.name} (uint16 [H, W])")
    if data is not None:
        if len(data) > MAX_REQUEST_BYTES:
            raise InvalidImageError(f"study is {len(data) / 1e6:.1f} MB, above the {MAX_REQUEST_BYTES / 1e6:.0f} MB limit")
        return decode_image(data)
    spacing = None
    if SPACING_ROW_MM.name in params and SPACING_COL_MM.name in params:
        spacing = (request_number(params, SPACING_ROW_MM), request_number(params, SPACING_COL_MM))
    bits = params.get(BITS_STORED.name)
    return decode_pixels(pixels, bits_stored=None if bits is None else request_number(params, BITS_STORED), spacing_mm=spacing)


def request_number(params: dict, parameter) -> float | int:
    """``params[parameter.name]`` as the parameter's type; InvalidRequestError if it is not a finite number."""
    value = params[parameter.name]
    try:
        number = parameter.kind(value)
    except (TypeError, ValueError) as exc:
        raise InvalidRequestError(f"request parameter {parameter.name}={value!r} is not a number") from exc
    if isinstance(number, float) and not math.isfinite(number):
        raise InvalidRequestError(f"request parameter {parameter.name}={value!r} is not finite")
    return number


def postprocess_overrides(base: PostprocessConfig, params: dict) -> PostprocessConfig:
    """Per-request ``score_threshold`` / ``iou_threshold`` / ``top_k`` over the model's defaults.

    Raises InvalidRequestError naming the bad parameter (answered INVALID_ARG).
    """
    values = {field: request_number(params, parameter) for parameter, field in POSTPROCESS_OVERRIDES.items()
              if parameter.name in params}
    try:
        return base.replace(**values)
    except ValueError as exc:
        raise InvalidRequestError(f"bad request parameter: {exc}") from exc


def detection_tensors(dets: list[DetectionArrays], class_names) -> dict[str, np.ndarray]:
    """Postprocess outputs of one request (``b`` images) as padded arrays.

    With several images in one request the shorter lists are padded: padding rows
    have score -1 and an empty label.
    """
    n = max((len(d) for d in dets), default=0)
    b = len(dets)
    boxes = np.zeros((b, n, 4), np.float32)
    mm = np.full((b, n, 4), np.nan, np.float32)
    scores = np.full((b, n), -1.0, np.float32)
    labels = np.full((b, n), b"", dtype=object)
    for i, d in enumerate(dets):
        k = len(d)
        boxes[i, :k], scores[i, :k] = d.boxes, d.scores
        if d.boxes_mm is not None:
            mm[i, :k] = d.boxes_mm
        labels[i, :k] = [class_names[int(c) - 1].encode() for c in d.labels]
    return {BOXES.name: boxes, BOXES_MM.name: mm, SCORES.name: scores, LABELS.name: labels}


def mask_tensors(dets: list[DetectionArrays]) -> dict[str, np.ndarray]:
    """The masks of one request's ``b`` images in their wire form (:data:`cxr.contract.MASK_RECTS`,
    ``MASK_BITS``, ``MASK_GRID``; :meth:`cxr.masks.CroppedMasks.to_wire`), padded like
    :func:`detection_tensors`: rects with ``(0, 0, 0, 0)``, bits with zero bytes after each image's own.

    A study whose masks would take more than :data:`~cxr.contract.MAX_MASK_BYTES` is refused
    (InvalidRequestError): the request's ``score_threshold`` / ``top_k`` decide how many there are."""
    wires = [d.masks.to_wire() for d in dets]
    for d, (rects, bits) in zip(dets, wires):
        size = rects.nbytes + bits.nbytes + MASK_GRID.dims[0] * 4
        if size > MAX_MASK_BYTES:
            raise InvalidRequestError(
                f"the masks of this study's {len(d)} detections take {size / 1e6:.1f} MB, above the "
                f"{MAX_MASK_BYTES / 1e6:.0f} MB bound per study: raise {SCORE_THRESHOLD.name} or lower {TOP_K.name}")
    n = max((len(r) for r, _ in wires), default=0)
    length = max((len(b) for _, b in wires), default=0)
    rects = np.zeros((len(dets), n, 4), np.int32)
    bits = np.zeros((len(dets), length), np.uint8)
    for i, (r, b) in enumerate(wires):
        rects[i, : len(r)], bits[i, : len(b)] = r, b
    grid = np.array([[d.masks.height, d.masks.width] for d in dets], np.int32).reshape(-1, 2)
    return {MASK_RECTS.name: rects, MASK_BITS.name: bits, MASK_GRID.name: grid}


def prepare_batch(decoded: list[DecodedImage], config: PreprocessConfig) -> tuple[np.ndarray, np.ndarray]:
    """Decoded studies -> the detector's input ``[B, C, S, S]`` and their letterbox records ``[B, 8]`` float32.

    The way in of the round trip :func:`unmap_detections` undoes (as torchvision's
    ``GeneralizedRCNNTransform`` records ``image_sizes``): the records travel as float32
    between the Triton models, so the in-process pipeline keeps them as float32 too.
    """
    images, records = preprocess_batch(decoded, config)
    return images, np.stack([r.to_array() for r in records]) if records else np.zeros((0, len(LetterboxRecord.ARRAY_FIELDS)), np.float32)


def unmap_detections(raw: RawOutput, records: np.ndarray, config: PostprocessConfig) -> list[DetectionArrays]:
    """The detector's raw batch (``boxes [B, K, 4]`` in the S x S frame, ``scores``, ``labels``, ``valid``)
    -> per image: thresholds, per-class NMS, boxes back in ORIGINAL pixels (the way out of :func:`prepare_batch`).

    A Mask R-CNN's fifth output (``masks [B, K, M, M]``) gives each final detection its binary mask in
    the ORIGINAL grid (:func:`unmap_masks`)."""
    boxes, scores, labels, valid = raw[:4]
    if len(raw) > 4:
        return [unmap_masks(boxes[i], scores[i], labels[i], raw[4][i], LetterboxRecord.from_array(records[i]), config,
                            valid_count=int(np.asarray(valid[i]).reshape(-1)[0]))
                for i in range(len(boxes))]
    return [postprocess(boxes[i], scores[i], labels[i], LetterboxRecord.from_array(records[i]), config,
                        valid_count=int(np.asarray(valid[i]).reshape(-1)[0]))
            for i in range(len(boxes))]


def unmap_masks(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, masks: np.ndarray, record: LetterboxRecord,
                config: PostprocessConfig, *, valid_count: int) -> DetectionArrays:
    """One image's candidates and their ``[K, M, M]`` mask probabilities -> final detections carrying
    their :class:`~cxr.masks.CroppedMasks` in ORIGINAL pixels: :func:`~cxr.postprocess.postprocess_indexed`
    picks the rows, :func:`~cxr.masks.paste_in_original` pastes the kept rows' masks over their
    (unclipped) letterbox boxes -- what ``cxr.training.engine.predict`` does with the eager model."""
    rows, dets = postprocess_indexed(boxes, scores, labels, record, config, valid_count=valid_count)
    pasted = paste_in_original(np.asarray(masks, np.float32)[rows], np.asarray(boxes, np.float32)[rows], record)
    return dataclasses.replace(dets, masks=pasted)
