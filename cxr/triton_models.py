"""Helpers the Triton Python models share, kept free of Triton so they are unit-tested.

The ``model.py`` files under ``model_repository/`` are adapters: they read tensors,
call these functions and :mod:`cxr` numerics, and build responses.
"""

from __future__ import annotations

import json
import math

import numpy as np

from cxr.errors import InvalidImageError
from cxr.imaging import DecodedImage, decode_image, decode_pixels
from cxr.postprocess import DetectionArrays, PostprocessConfig

# Largest encoded study accepted in one request (a 4300x4300 16-bit DICOM is ~37 MB).
MAX_REQUEST_BYTES = 64 * 1024 * 1024


def model_parameters(model_config: str | dict) -> dict:
    """``parameters`` of a Triton model config as {key: value}; JSON values decoded."""
    cfg = json.loads(model_config) if isinstance(model_config, str) else model_config
    out = {}
    for key, value in cfg.get("parameters", {}).items():
        text = value.get("string_value", "")
        try:
            out[key] = json.loads(text)
        except json.JSONDecodeError:
            out[key] = text
    return out


def decode_request_image(data: bytes | None, pixels: np.ndarray | None, params: dict) -> DecodedImage:
    """One study from a request: encoded bytes (PNG/JPEG/DICOM) or a raw UINT16 array.

    Request parameters: ``bits_stored`` (for pixels), ``spacing_row_mm`` /
    ``spacing_col_mm`` (for pixels; DICOM carries its own).
    """
    if (data is None) == (pixels is None):
        raise InvalidImageError("send exactly one of IMAGE_BYTES (encoded PNG/JPEG/DICOM) or PIXELS (uint16 [H, W])")
    if data is not None:
        if len(data) > MAX_REQUEST_BYTES:
            raise InvalidImageError(f"study is {len(data) / 1e6:.1f} MB, above the {MAX_REQUEST_BYTES / 1e6:.0f} MB limit")
        return decode_image(data)
    spacing = None
    if "spacing_row_mm" in params and "spacing_col_mm" in params:
        spacing = (float(params["spacing_row_mm"]), float(params["spacing_col_mm"]))
    bits = params.get("bits_stored")
    return decode_pixels(pixels, bits_stored=None if bits is None else int(bits), spacing_mm=spacing)


def postprocess_overrides(base: PostprocessConfig, params: dict) -> PostprocessConfig:
    """Per-request ``score_threshold`` / ``iou_threshold`` / ``top_k`` over the model's defaults.

    Raises ValueError naming the bad parameter (the caller answers INVALID_ARG).
    """
    values = {}
    for key, field, cast in (("score_threshold", "score_threshold", float), ("iou_threshold", "iou_threshold", float),
                             ("top_k", "max_detections", int)):
        if key in params:
            try:
                values[field] = cast(params[key])
            except (TypeError, ValueError):
                raise ValueError(f"request parameter {key}={params[key]!r} is not a number") from None
            if isinstance(values[field], float) and not math.isfinite(values[field]):
                raise ValueError(f"request parameter {key}={params[key]!r} is not finite")
    try:
        return base.replace(**values)
    except ValueError as exc:
        raise ValueError(f"bad request parameter: {exc}") from exc


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
    return {"BOXES": boxes, "BOXES_MM": mm, "SCORES": scores, "LABELS": labels}


def error_response(pb_utils, message: str, code: str = "INVALID_ARG"):
    """A per-request error response, INVALID_ARG unless ``code`` names another
    ``TritonError`` code (``pb_utils`` is the stub's module, passed in so this file
    imports without Triton)."""
    code = getattr(pb_utils.TritonError, code, None)  # error codes exist from Triton 23.09
    err = pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)
    return pb_utils.InferenceResponse(output_tensors=[], error=err)
