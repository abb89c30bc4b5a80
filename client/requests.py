"""The request builder and response parser both clients share (pure, no I/O but reading a named file).

:func:`build_request` turns whatever the caller passed (path, bytes, a client-side
:class:`~cxr.client.study.Study`, numpy array, :class:`Pixels`, ``pydicom.Dataset``) into
a :class:`Request`: tensors, request parameters, the original image size and the
SOPInstanceUID.  Encoded studies are sent exactly as read (a Study's bytes, never
re-encoded).  It validates everything it can before a byte is sent, raising
``DetectorError(status="CLIENT")``: the pixel-array rules are the server's own
(:func:`cxr.decode.image.check_pixel_array`), and the request parameters are the
contract's (:data:`cxr.contract.POSTPROCESS_OVERRIDES`, :func:`request_parameters`).
:class:`ModelSpec` is the served contract as read from the server's model config, and
:func:`parse_response` maps the ensemble's outputs to a
:class:`~cxr.client.results.StudyResult`.  The sync and asyncio clients differ only
in how they wait.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np
import pydicom

from cxr import contract
from cxr.client.errors import DetectorError, client_error
from cxr.boxes import LetterboxRecord
from cxr.client.results import Detection, ExplainedResult, Mask, StudyResult
from cxr.client.study import Study
from cxr.contract import MAX_REQUEST_BYTES, RequestParameter
from cxr.decode.header import check_size
from cxr.decode.image import check_pixel_array, probe
from cxr.errors import InvalidImageError
from cxr.saliency import MAX_GRID, MAX_MASKS

# The served contract (cxr.contract).  These names are checked against the server's
# model config on first use, so a server with another contract fails loudly, once.
IMAGE_BYTES, PIXELS = contract.IMAGE_BYTES.name, contract.PIXELS.name
REQUIRED_INPUTS = (IMAGE_BYTES, PIXELS)
REQUIRED_OUTPUTS = tuple(t.name for t in contract.REQUIRED_OUTPUTS)
OPTIONAL_OUTPUTS = tuple(t.name for t in contract.SEGMENT_OUTPUTS if t not in contract.REQUIRED_OUTPUTS)  # masks: cxr_segment's
MASK_OUTPUTS = (contract.MASK_RECTS.name, contract.MASK_BITS.name, contract.MASK_GRID.name)
EXPLAIN_OUTPUTS = (contract.SALIENCY.name, contract.RECORD.name)  # cxr_explain's, besides the detection outputs


@dataclass(frozen=True)
class Pixels:
    """Pixels the caller decoded itself, with what the server needs to scale them.

    array: uint8 or uint16 ``[H, W]`` grayscale, 0 = black.  uint8 is widened to
    uint16 and sent with ``bits_stored=8``.
    bits_stored: significant bits of uint16 data (default 16, e.g. 12 for most CR).
    spacing_mm: (row, column) pixel spacing so that results carry boxes in mm.
    """

    array: np.ndarray
    bits_stored: int | None = None
    spacing_mm: tuple[float, float] | None = None


ImageInput = Union[str, os.PathLike, bytes, bytearray, memoryview, Study, np.ndarray, Pixels, pydicom.Dataset]


@dataclass(frozen=True)
class InputSpec:
    """One input tensor, without the batch dimension (the model spec adds it)."""

    name: str
    data: np.ndarray


@dataclass(frozen=True)
class Request:
    """Everything one predict call sends and needs to build its result."""

    inputs: tuple[InputSpec, ...]
    parameters: dict[str, int | float]
    image_size: tuple[int, int]  # (height, width) of the original image
    sop_instance_uid: str | None = None
    source: str = ""  # short, PHI-free description for logs: "DICOM 2048x2500"

    @property
    def log_id(self) -> str:
        """A short hash of the SOPInstanceUID: lets logs correlate, reveals nothing."""
        if not self.sop_instance_uid:
            return "-"
        return hashlib.sha256(self.sop_instance_uid.encode()).hexdigest()[:10]


# The range each override of the contract may take, checked here so that a request the server
# would refuse is never sent (its PostprocessConfig and SaliencyConfig hold the same ranges).
# Every override in cxr.contract.POSTPROCESS_OVERRIDES and SALIENCY_OVERRIDES has an entry
# (tests/client/test_requests.py).
OVERRIDE_RANGES: dict[RequestParameter, tuple[Callable[[float], bool], str]] = {
    contract.SCORE_THRESHOLD: (lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
    contract.IOU_THRESHOLD: (lambda v: 0.0 < v <= 1.0, "in (0, 1]"),
    contract.TOP_K: (lambda v: v >= 1, "a positive integer"),
    contract.SALIENCY_MASKS: (lambda v: 1 <= v <= MAX_MASKS, f"an integer in [1, {MAX_MASKS}]"),
    contract.SALIENCY_GRID: (lambda v: 2 <= v <= MAX_GRID, f"an integer in [2, {MAX_GRID}]"),
    contract.SALIENCY_SEED: (lambda v: 0 <= v < 2**63, "an integer in [0, 2**63)"),
}


def request_parameters(**overrides: float | int | None) -> dict[str, int | float]:
    """Validated per-request overrides (``score_threshold``, ``iou_threshold``, ``top_k``:
    :data:`cxr.contract.POSTPROCESS_OVERRIDES`; for ``cxr_explain`` also ``saliency_masks``,
    ``saliency_grid``, ``saliency_seed``: :data:`cxr.contract.SALIENCY_OVERRIDES`), as the Python
    types tritonclient accepts; ``None`` leaves the server's default.  The one place both
    clients build them."""
    known = {parameter.name: parameter for parameter in (*contract.POSTPROCESS_OVERRIDES, *contract.SALIENCY_OVERRIDES)}
    out: dict[str, int | float] = {}
    for name, value in overrides.items():
        if name not in known:
            raise client_error(f"unknown request parameter {name!r}; the server takes {', '.join(known)}")
        if value is not None:
            out[name] = _checked(known[name], value)
    return out


def _checked(parameter: RequestParameter, value: Any) -> int | float:
    accepts, allowed = OVERRIDE_RANGES[parameter]
    if parameter.kind is int:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not accepts(value):
            raise client_error(f"{parameter.name} must be {allowed}, got {value!r}")
        return int(value)
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise client_error(f"{parameter.name} must be a number {allowed}, got {value!r}")
    number = float(value)
    if not (math.isfinite(number) and accepts(number)):
        raise client_error(f"{parameter.name} must be {allowed}, got {value!r}")
    return number


def build_request(image: ImageInput, **overrides: float | int | None) -> Request:
    """Validate ``image`` and turn it into tensors + parameters.  Pure: no network.

    ``overrides``: the request parameters :func:`request_parameters` takes.  A path is read
    once into a :class:`~cxr.client.study.Study`; a Study (or bytes) is sent as it is,
    never re-encoded.  Raises DetectorError(status="CLIENT") naming what was received and
    what is allowed.
    """
    params = request_parameters(**overrides)
    if isinstance(image, Study):
        return _from_study(image, params)
    if isinstance(image, pydicom.Dataset):
        return _from_dataset(image, params)
    if isinstance(image, (np.ndarray, Pixels)):
        return _from_pixels(image if isinstance(image, Pixels) else Pixels(image), params)
    if isinstance(image, (str, os.PathLike)):
        return _from_study(Study.read(image), params)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return _from_study(Study(image), params)
    raise client_error(
        f"unsupported input type {type(image).__name__}; pass a file path, encoded bytes (PNG/JPEG/DICOM), "
        "a cxr.client.study.Study, a uint8/uint16 numpy array [H, W], cxr.client.Pixels or a pydicom.Dataset"
    )


@contextmanager
def _checked_here() -> Iterator[None]:
    # The core's checks and messages, so a request the server would refuse is never sent.
    try:
        yield
    except InvalidImageError as exc:
        raise client_error(str(exc)) from exc


def _bytes_input(data: bytes) -> InputSpec:
    return InputSpec(IMAGE_BYTES, np.array([data], dtype=object))


def _from_study(study: Study, params: dict) -> Request:
    data = study.data
    if len(data) > MAX_REQUEST_BYTES:
        raise client_error(f"study is {len(data) / 1e6:.1f} MB, above the server's {MAX_REQUEST_BYTES / 1e6:.0f} MB limit")
    with _checked_here():
        header = study.header  # the header only: damaged pixel data is the server's to report
        check_size(header.height, header.width, f"{header.format.display_name} image")
    h, w, sop = header.height, header.width, header.dicom.sop_instance_uid if header.dicom else None
    return Request((_bytes_input(data),), params, (h, w), sop, f"{header.format.display_name} {w}x{h}")


def _from_dataset(ds: pydicom.Dataset, params: dict) -> Request:
    # A Dataset the caller built or changed has no bytes of its own: it is written once here.
    # (A study read from a file or received by the bridge is a Study, sent as it arrived.)
    if "PixelData" not in ds:
        raise client_error("pydicom.Dataset has no PixelData: send an image, not a header")
    with _checked_here():
        header = probe(ds)
        check_size(header.height, header.width, "DICOM image")
    h, w = header.height, header.width
    buf = io.BytesIO()
    try:
        # enforce_file_format writes the preamble + "DICM" the server recognises.
        pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    except (ValueError, AttributeError, TypeError) as exc:
        raise client_error(f"cannot serialise the pydicom.Dataset as a DICOM file: {exc}") from exc
    return Request((_bytes_input(buf.getvalue()),), params, (h, w), header.dicom.sop_instance_uid, f"DICOM {w}x{h}")


def _from_pixels(pixels: Pixels, params: dict) -> Request:
    with _checked_here():  # the server's own rules; floats are refused: the wire carries uint16
        arr, bits = check_pixel_array(pixels.array, bits_stored=pixels.bits_stored, floats=False)
    h, w = arr.shape
    params = dict(params)
    if arr.dtype == np.uint8 or pixels.bits_stored is not None:  # uint8 travels widened to uint16
        params[contract.BITS_STORED.name] = bits
    if pixels.spacing_mm is not None:
        row, col = (float(v) for v in pixels.spacing_mm)
        if not (math.isfinite(row) and math.isfinite(col) and row > 0 and col > 0):
            raise client_error(f"spacing_mm must be two positive numbers (row, column), got {pixels.spacing_mm!r}")
        params[contract.SPACING_ROW_MM.name], params[contract.SPACING_COL_MM.name] = row, col
    data = np.ascontiguousarray(arr, dtype=np.uint16)
    return Request((InputSpec(PIXELS, data),), params, (h, w), None, f"pixels {w}x{h}")


# ------------------------------------------------------------------ served contract


@dataclass(frozen=True)
class ModelSpec:
    """The ensemble's contract as the server reports it (``get_model_config``).

    batched: the model has ``max_batch_size > 0``, so every tensor gets a leading
    batch dimension of 1.  datatypes: Triton datatype per input name ("BYTES", "UINT16").
    """

    inputs: dict[str, str]
    outputs: tuple[str, ...]
    batched: bool
    version_parameter: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_config(cls, response: dict, model_name: str, *, explain: bool = False) -> ModelSpec:
        """Validate a ``get_model_config(as_json=True)`` response; DetectorError if incompatible.

        explain: the model must also return saliency maps (``cxr_explain``'s outputs).
        """
        config = response.get("config", response)
        inputs = {i["name"]: _datatype(i.get("data_type", "")) for i in config.get("input", [])}
        outputs = tuple(o["name"] for o in config.get("output", []))
        required = REQUIRED_OUTPUTS + (EXPLAIN_OUTPUTS if explain else ())
        missing = [n for n in REQUIRED_INPUTS if n not in inputs] + [n for n in required if n not in outputs]
        if missing:
            expected = contract.EXPLAIN if explain else contract.ENSEMBLE
            raise DetectorError(
                "FAILED_PRECONDITION",
                f"model {model_name!r} on the server is not a cxr {'explainer' if explain else 'detector'}: it lacks "
                f"{', '.join(missing)} (inputs {sorted(inputs)}, outputs {list(outputs)}); point it at {expected}",
                retryable=False,
            )
        if inputs[PIXELS] != contract.PIXELS.wire_dtype or inputs[IMAGE_BYTES] != contract.IMAGE_BYTES.wire_dtype:
            raise DetectorError(
                "FAILED_PRECONDITION",
                f"model {model_name!r} declares {IMAGE_BYTES} as {inputs[IMAGE_BYTES]} and {PIXELS} as {inputs[PIXELS]}; "
                "this client sends BYTES and UINT16",
                retryable=False,
            )
        version = config.get("parameters", {}).get(contract.ConfigKey.MODEL_VERSION, {}).get("string_value", "")
        wanted = tuple(n for n in required + OPTIONAL_OUTPUTS if n in outputs)
        return cls(inputs, wanted, int(config.get("max_batch_size", 0) or 0) > 0, version, config)

    def tensor(self, spec: InputSpec) -> tuple[list[int], str, np.ndarray]:
        """(shape, datatype, data) of one input as the server expects it."""
        data = spec.data[None] if self.batched else spec.data
        return list(data.shape), self.inputs[spec.name], data


def _datatype(config_type: str) -> str:
    # Model configs say TYPE_STRING / TYPE_UINT16; the inference protocol says BYTES / UINT16.
    name = config_type.removeprefix("TYPE_")
    return "BYTES" if name == "STRING" else name


def parse_response(result: Any, request: Request, spec: ModelSpec, *, model_name: str, model_version: str,
                   latency_ms: float) -> StudyResult:
    """Ensemble outputs (anything with ``as_numpy(name)``) -> StudyResult.

    Padding rows (score < 0, which the server uses when a request holds several
    images) are dropped; an all-NaN ``BOXES_MM`` row means no pixel spacing.
    """

    def out(name: str) -> np.ndarray | None:
        if name not in spec.outputs:
            return None
        arr = result.as_numpy(name)
        return None if arr is None else (arr[0] if spec.batched else arr)

    boxes, scores, labels = (out(t.name) for t in (contract.BOXES, contract.SCORES, contract.LABELS))
    if boxes is None or scores is None or labels is None:
        raise DetectorError("INTERNAL", "server response lacks BOXES, SCORES or LABELS", retryable=False)
    mm = out(contract.BOXES_MM.name)
    detections = []
    for i in range(len(scores)):
        if scores[i] < 0:
            continue
        label = labels[i].decode() if isinstance(labels[i], bytes) else str(labels[i])
        box_mm = None
        if mm is not None and np.isfinite(mm[i]).all():
            box_mm = tuple(float(v) for v in mm[i])
        detections.append(Detection(label, float(scores[i]), tuple(float(v) for v in boxes[i]), box_mm))
    if all(n in spec.outputs for n in MASK_OUTPUTS):
        detections = _with_masks(detections, *(out(n) for n in MASK_OUTPUTS), request.image_size)
    version = out(contract.MODEL_VERSION.name)
    if version is not None and version.size:
        text = version.reshape(-1)[0]
        served_version = text.decode() if isinstance(text, bytes) else str(text)
    else:
        served_version = spec.version_parameter or model_version
    return StudyResult(tuple(detections), model_name, served_version, request.image_size, latency_ms,
                       request.sop_instance_uid)


def _with_masks(detections: list[Detection], rects, bits, grid, image_size) -> list[Detection]:
    """``cxr_segment``'s wire form (:mod:`cxr.masks`, ``CroppedMasks.from_wire``) -> each detection's Mask."""
    from cxr.masks import CroppedMasks, wire_size

    if rects is None or bits is None or grid is None:
        raise DetectorError("INTERNAL", "server response lacks the mask outputs its config declares", retryable=False)
    rows, columns = (int(v) for v in np.asarray(grid).reshape(-1)[:2])
    if (rows, columns) != tuple(image_size):
        raise DetectorError("INTERNAL", f"the server's masks are on a {rows}x{columns} grid, the study is "
                            f"{image_size[0]}x{image_size[1]}: they cannot be this study's", retryable=False)
    r = np.asarray(rects).reshape(-1, 4)[: len(detections)]
    try:
        masks = CroppedMasks.from_wire(r, np.asarray(bits).reshape(-1)[: wire_size(r)], rows, columns)
    except ValueError as exc:
        raise DetectorError("INTERNAL", f"the server's masks do not decode: {exc}", retryable=False) from exc
    return [dataclasses.replace(d, mask=Mask(tuple(int(v) for v in masks.rects[i]), masks.crops[i], (rows, columns)))
            for i, d in enumerate(detections)]


def parse_explained(result: Any, request: Request, spec: ModelSpec, detected: StudyResult) -> ExplainedResult:
    """``cxr_explain``'s outputs -> :class:`~cxr.client.results.ExplainedResult`: ``detected``
    (:func:`parse_response` of the same outputs) with one map per detection, in the same order.

    The settings reported are the request's, else the defaults in the server's config.
    """
    scores = result.as_numpy(contract.SCORES.name)[0]
    saliency = result.as_numpy(contract.SALIENCY.name)[0][scores >= 0]  # the rows parse_response kept
    record = LetterboxRecord.from_array(result.as_numpy(contract.RECORD.name)[0])
    if saliency.shape != (len(detected.detections), *record.resized_shape):
        raise DetectorError("INTERNAL", f"server returned saliency maps {list(saliency.shape)} for "
                            f"{len(detected.detections)} detections on a {list(record.resized_shape)} film",
                            retryable=False)
    served = spec.raw.get("parameters", {}).get(contract.ConfigKey.SALIENCY, {}).get("string_value", "{}")
    settings = {**json.loads(served or "{}"),
                **{field: request.parameters[p.name] for p, field in contract.SALIENCY_OVERRIDES.items()
                   if p.name in request.parameters}}
    return ExplainedResult(**{f.name: getattr(detected, f.name) for f in dataclasses.fields(StudyResult)},
                           saliency=np.ascontiguousarray(saliency, np.float32), record=record,
                           masks=int(settings.get("masks", 0)), grid=int(settings.get("grid", 0)),
                           seed=int(settings.get("seed", 0)))
