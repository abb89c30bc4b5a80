"""The served contract, defined once: tensors, request parameters, models, artifacts.

Everything that crosses a process boundary is named here and nowhere else: the
``cxr_detector`` ensemble's inputs and outputs (and ``cxr_explain``'s), the largest request, the default ports,
the tensors between its three steps,
the exported graph's input and outputs, the per-request parameters, the keys of the
``parameters`` that ``cxr export`` stamps into every ``config.pbtxt``, and the
artifact kinds (export kind <-> file <-> precision <-> benchmark backend <-> Triton
platform).  The config renderer (:mod:`cxr.export.triton_config`), the three Triton
adapters (``model_repository/*/1/model.py``), the client's request builder, the
server launcher and the benchmarks all import it, and the committed configs are
tested equal to the rendered ones, so a name changed here changes everywhere or
fails a test.

Torch-free and Triton-free (stdlib only): PACS hosts import it with the client.

Its closed vocabularies (steps, config keys, precisions, artifact kinds, serve targets)
are :class:`~cxr.vocab.ClosedVocabulary` enums: members are their string values,
constructors take a member or a string (``Precision("int8") is Precision.INT8``), and an
unknown value raises :class:`~cxr.errors.InvalidOptionError` that lists the valid ones.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from cxr.vocab import ClosedVocabulary


# ------------------------------------------------------------------------ tensors


@dataclass(frozen=True)
class Tensor:
    """One tensor of a Triton model: name, config data type and dims without the batch.

    dtype is the model-config spelling (``TYPE_FP32``); :attr:`wire_dtype` is the
    inference protocol's (``FP32``, ``BYTES``).  ``-1`` is a variable dimension.
    ``reshape`` is Triton's config reshape (the tensor as the model sees it).
    """

    name: str
    dtype: str
    dims: tuple[int, ...]
    optional: bool = False
    reshape: tuple[int, ...] | None = None

    @property
    def wire_dtype(self) -> str:
        kind = self.dtype.removeprefix("TYPE_")
        return "BYTES" if kind == "STRING" else kind

    @property
    def numpy_dtype(self) -> str:
        """numpy dtype name; ``object`` for BYTES (arrays of ``bytes``)."""
        return _NUMPY[self.dtype]

    def with_dims(self, *dims: int) -> Tensor:
        return replace(self, dims=tuple(int(d) for d in dims))


_NUMPY = {"TYPE_FP32": "float32", "TYPE_FP16": "float16", "TYPE_INT64": "int64", "TYPE_INT32": "int32",
          "TYPE_UINT16": "uint16", "TYPE_UINT8": "uint8", "TYPE_STRING": "object"}

ENSEMBLE = "cxr_detector"  # the only model clients call
# Largest encoded study accepted in one request (a 4300x4300 16-bit DICOM is ~37 MB).
MAX_REQUEST_BYTES = 64 * 1024 * 1024
MAX_BATCH = 8  # every model's max_batch_size: dynamic batches of up to 8 studies

# Where a server listens unless told otherwise: Triton's own defaults, so a client,
# perf_analyzer or a Kubernetes probe written for any Triton finds ours.
GRPC_PORT = 8001
HTTP_PORT = 8000
METRICS_PORT = 8002
LOCAL_URL = f"127.0.0.1:{GRPC_PORT}"  # the client's default: a server started on this host with the defaults

# The ensemble: exactly one of the two inputs per request.
IMAGE_BYTES = Tensor("IMAGE_BYTES", "TYPE_STRING", (1,), optional=True)  # one encoded PNG/JPEG/DICOM
PIXELS = Tensor("PIXELS", "TYPE_UINT16", (-1, -1), optional=True)  # decoded grayscale [H, W]
ENSEMBLE_INPUTS = (IMAGE_BYTES, PIXELS)

BOXES = Tensor("BOXES", "TYPE_FP32", (-1, 4))  # xyxy, ORIGINAL image pixels
BOXES_MM = Tensor("BOXES_MM", "TYPE_FP32", (-1, 4))  # mm from the top-left corner, NaN without spacing
SCORES = Tensor("SCORES", "TYPE_FP32", (-1,))  # descending; -1 pads shorter lists
LABELS = Tensor("LABELS", "TYPE_STRING", (-1,))  # finding names
MODEL_VERSION = Tensor("MODEL_VERSION", "TYPE_STRING", (1,))
ENSEMBLE_OUTPUTS = (BOXES, BOXES_MM, SCORES, LABELS, MODEL_VERSION)
REQUIRED_OUTPUTS = (BOXES, SCORES, LABELS)  # a client cannot build a result without these

# The letterbox record (cxr.boxes.LetterboxRecord.to_array) between preprocess and postprocess.
RECORD_LENGTH = 8
RECORD = Tensor("RECORD", "TYPE_FP32", (RECORD_LENGTH,))


def preprocess_outputs(size: int, channels: int) -> tuple[Tensor, Tensor]:
    """``IMAGES [C, S, S]`` (the detector's input) and ``RECORD [8]``."""
    return Tensor("IMAGES", "TYPE_FP32", (channels, size, size)), RECORD


# The exported graph (ONNX/TensorRT) and the detector step: input and raw outputs.
DETECTOR_INPUT = "images"
RAW_OUTPUTS = ("boxes", "scores", "labels", "valid")  # the graph's output order
# A Mask R-CNN's graph adds each candidate's M x M mask probabilities (its own class, over its
# box in the S x S frame) as a fifth output; pasting is cxr.masks, after NMS (export/README.md).
MASK_PROBS = "masks"
SEGMENT_RAW_OUTPUTS = (*RAW_OUTPUTS, MASK_PROBS)


def raw_outputs(segment: bool) -> tuple[str, ...]:
    """The graph's output names in order: a detector's four, a Mask R-CNN's five."""
    return SEGMENT_RAW_OUTPUTS if segment else RAW_OUTPUTS


def detector_input(size: int, channels: int) -> Tensor:
    return Tensor(DETECTOR_INPUT, "TYPE_FP32", (channels, size, size))


def detector_outputs(candidates: int, *, for_postprocess: bool = False, mask_size: int | None = None) -> tuple[Tensor, ...]:
    """The graph's ``boxes [K, 4]``, ``scores [K]``, ``labels [K]`` and ``valid`` (and, with
    ``mask_size`` M, a Mask R-CNN's ``masks [K, M, M]``).

    The graph returns ``valid`` as ``[B]``; Triton needs at least one dimension after
    the batch, so the detector's config declares ``[1]`` reshaped to ``[]``, and the
    postprocess step receives it as ``[1]`` (``for_postprocess``).
    """
    valid = Tensor("valid", "TYPE_INT64", (1,), reshape=None if for_postprocess else ())
    out = (Tensor("boxes", "TYPE_FP32", (candidates, 4)), Tensor("scores", "TYPE_FP32", (candidates,)),
           Tensor("labels", "TYPE_INT64", (candidates,)), valid)
    if mask_size is None:
        return out
    return (*out, Tensor(MASK_PROBS, "TYPE_FP32", (candidates, mask_size, mask_size)))


class Step(ClosedVocabulary, label="ensemble step"):
    """The three models behind ``cxr_detector``, in order."""

    PREPROCESS = "preprocess"  # Python: decode + letterbox + normalise
    DETECTOR = "detector"  # Python + ONNX Runtime (CPU) or onnxruntime_onnx / tensorrt_plan (NGC)
    POSTPROCESS = "postprocess"  # Python: per-class NMS, thresholds, boxes back to original pixels


# --------------------------------------------------------------- request parameters


@dataclass(frozen=True)
class RequestParameter:
    """A per-request parameter: its wire name, Python type and what it means."""

    name: str
    kind: type
    doc: str


SCORE_THRESHOLD = RequestParameter("score_threshold", float, "drop detections scoring below this, in [0, 1]")
IOU_THRESHOLD = RequestParameter("iou_threshold", float, "per-class NMS IoU threshold, in (0, 1]")
TOP_K = RequestParameter("top_k", int, "at most this many detections per image")
BITS_STORED = RequestParameter("bits_stored", int, "significant bits of uint16 PIXELS (default 16)")
SPACING_ROW_MM = RequestParameter("spacing_row_mm", float, "PIXELS row spacing in mm (boxes in mm need both)")
SPACING_COL_MM = RequestParameter("spacing_col_mm", float, "PIXELS column spacing in mm")
# The postprocess overrides and the cxr.postprocess.PostprocessConfig field each one sets.
POSTPROCESS_OVERRIDES = {SCORE_THRESHOLD: "score_threshold", IOU_THRESHOLD: "iou_threshold", TOP_K: "max_detections"}


# ------------------------------------------------------------------ explanations

# The model clients call for per-detection saliency maps (D-RISE, cxr.saliency).  A Python
# model, not an ensemble: in Triton 2.51 a step of an ensemble never sees its client
# cancel (request.is_cancelled() stays False; measured, model_repository/README.md), and
# an explanation is seconds of work to stop.  It runs the preprocess numerics itself and
# sends the masked copies to the ``detector`` step (BLS); ``cxr_detector`` is unchanged.
EXPLAIN = "cxr_explain"
EXPLAIN_MAX_BATCH = 1  # one study per request: each study's maps have the size of its own film
# [D, h, w]: one map per detection (BOXES order), on the film inside the letterbox
# (LetterboxRecord.resized_shape of RECORD); cxr.saliency.to_original brings one to ORIGINAL pixels.
SALIENCY = Tensor("SALIENCY", "TYPE_FP32", (-1, -1, -1))
EXPLAIN_OUTPUTS = (*ENSEMBLE_OUTPUTS, SALIENCY, RECORD)

SALIENCY_MASKS = RequestParameter("saliency_masks", int, "D-RISE masked passes N (time grows linearly)")
SALIENCY_GRID = RequestParameter("saliency_grid", int, "cells per side of each random mask")
SALIENCY_SEED = RequestParameter("saliency_seed", int, "seed of the masks: the same seed gives the same maps")
# The explainer's overrides and the cxr.saliency.SaliencyConfig field each one sets.
SALIENCY_OVERRIDES = {SALIENCY_MASKS: "masks", SALIENCY_GRID: "grid", SALIENCY_SEED: "seed"}


# ------------------------------------------------------------------ segmentation

# A Mask R-CNN repository (``cxr export`` of a segment-task checkpoint) serves a second
# ensemble beside ``cxr_detector`` (which stays as it is: it ignores the detector's masks):
# preprocess -> detector (graph with MASK_PROBS) -> segment_postprocess (cxr.postprocess, then
# cxr.masks pastes each kept detection's M x M probabilities into the ORIGINAL grid and encodes
# them as cxr.masks.CroppedMasks.to_wire does).
SEGMENT = "cxr_segment"
SEGMENT_POSTPROCESS = "segment_postprocess"
MASK_SIZE = 28  # M: the graph's masks are [K, M, M] (torchvision's mask head: 14 x 14 pooled, 2x up-convolution)
# The wire form of one study's masks, per detection in BOXES order (N = the detections, the
# rows whose SCORES are not the -1 padding):
MASK_RECTS = Tensor("MASK_RECTS", "TYPE_INT32", (-1, 4))  # (x0, y0, x1, y1) half-open, ORIGINAL pixels; (0, 0, 0, 0): empty
MASK_BITS = Tensor("MASK_BITS", "TYPE_UINT8", (-1,))  # each rect's crop row-major, 8 pixels a byte (first in the high bit), padded to a byte
MASK_GRID = Tensor("MASK_GRID", "TYPE_INT32", (2,))  # (rows, columns) of the ORIGINAL image
SEGMENT_OUTPUTS = (*ENSEMBLE_OUTPUTS, MASK_RECTS, MASK_BITS, MASK_GRID)
# A study's masks on the wire take 16 N + sum_i ceil(h_i w_i / 8) bytes (+ 8 for the grid):
# each rect is its mask's tight bounding box, inside the detection's box grown by 30/28 (the
# paste's padding) and cut to the film, so w_i h_i <= (30/28)^2 (box_w + 1)(box_h + 1).  A study
# whose masks would exceed MAX_MASK_BYTES is refused (INVALID_ARG, naming the size and the
# score_threshold / top_k that bound it); several studies in one request are padded to the longest.
MAX_MASK_BYTES = 32 * 1024 * 1024


def mask_wire_bound(detections: int, rows: int, columns: int) -> int:
    """The most bytes one study's masks can take: every mask a whole ``rows x columns`` film."""
    return 8 + detections * (16 + (rows * columns + 7) // 8)


# Keys of the ``parameters`` that ``cxr export`` stamps into the model configs.
class ConfigKey(ClosedVocabulary, label="model config parameter"):
    """What the Triton adapters read from ``config.pbtxt``."""

    MODEL_VERSION = "model_version"
    CLASS_NAMES = "class_names"
    PREPROCESS = "preprocess"  # cxr.preprocess.PreprocessConfig as JSON
    POSTPROCESS = "postprocess"  # cxr.postprocess.PostprocessConfig as JSON
    MODEL_FILE = "model_file"  # CPU detector: the FP32 ONNX file
    INT8_MODEL_FILE = "int8_model_file"  # CPU detector: the INT8 ONNX file
    PRECISION = "precision"  # CPU detector: which of the two runs (CXR_DETECTOR_PRECISION wins)
    INTRA_OP_THREADS = "intra_op_threads"
    INTRA_OP_SPINNING = "intra_op_spinning"  # ONNX Runtime threads busy-wait ("1") or sleep ("0") between kernels
    CPU_MEM_ARENA = "cpu_mem_arena"
    RUNTIME = "runtime"  # CPU detector's in-process runtime: a DetectorRuntime
    SALIENCY = "saliency"  # cxr.saliency.SaliencyConfig as JSON: the explainer's defaults


class DetectorRuntime(ClosedVocabulary, label="detector runtime"):
    """What runs the ONNX file inside the embedded server's CPU detector."""

    ONNXRUNTIME = "onnxruntime"  # the default
    OPENVINO = "openvino"  # the `openvino` extra; same ONNX files


PRECISION_ENV = "CXR_DETECTOR_PRECISION"  # set by `cxr serve --precision` for the CPU detector


# ------------------------------------------------------------------------ artifacts


class Precision(ClosedVocabulary, label="precision"):
    """The numeric format an artifact or backend computes in."""

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"  # OpenVINO's inference precision on the FP32 file (cxr.serving.paths)
    INT8 = "int8"
    # The INT8 QDQ file on OpenVINO with its unquantized layers (ROI Align, the box predictor, ...) at
    # BF16 inference precision instead of FP32: AMX runs both (cxr.serving.paths, openvino-int8-bf16)
    INT8_BF16 = "int8-bf16"


@dataclass(frozen=True)
class _ArtifactRow:
    file: str  # in detector/<version>/
    precision: Precision
    backend: str  # its name in `cxr bench --backends`
    platform: str  # the Triton platform that serves it natively (NGC server)


class Artifact(ClosedVocabulary, label="export kind"):
    """What ``cxr export KIND`` builds and places in ``detector/1/``."""

    ONNX = "onnx"
    ONNX_INT8 = "onnx-int8"
    TRT = "trt"

    @property
    def _row(self) -> _ArtifactRow:
        return _ARTIFACTS[self]

    @property
    def file(self) -> str:
        return self._row.file

    @property
    def path(self) -> str:
        """Relative to the model repository."""
        return f"{Step.DETECTOR}/1/{self.file}"

    @property
    def precision(self) -> Precision:
        return self._row.precision

    @property
    def backend(self) -> str:
        return self._row.backend

    @property
    def platform(self) -> str:
        return self._row.platform

    @classmethod
    def for_cpu(cls, precision: Precision | str) -> Artifact:
        """The ONNX file the embedded CPU server's detector runs at ``precision`` (BF16: OpenVINO's
        inference precision on the FP32 file; INT8-BF16: the INT8 file)."""
        precision = Precision(precision)
        if precision is Precision.BF16:
            return cls.ONNX
        if precision is Precision.INT8_BF16:
            return cls.ONNX_INT8
        for kind in (cls.ONNX, cls.ONNX_INT8):
            if kind.precision is precision:
                return kind
        raise ValueError(f"the CPU detector runs fp32 or int8 ONNX (bf16 runs the fp32 file), not {precision}")


_ARTIFACTS = {
    Artifact.ONNX: _ArtifactRow("model.onnx", Precision.FP32, "onnx", "onnxruntime_onnx"),
    Artifact.ONNX_INT8: _ArtifactRow("model.int8.onnx", Precision.INT8, "onnx-int8", "onnxruntime_onnx"),
    Artifact.TRT: _ArtifactRow("model.plan", Precision.FP16, "tensorrt", "tensorrt_plan"),
}
CPU_PRECISIONS = (Precision.FP32, Precision.INT8)


class ServeTarget(ClosedVocabulary, label="target"):
    """Which detector config ``cxr serve --target`` selects."""

    CPU = "cpu"  # embedded server: Python backend + ONNX Runtime (fp32 or int8 ONNX)
    GPU_ONNX = "gpu-onnx"  # NGC server: onnxruntime_onnx on the GPU
    GPU_TRT = "gpu-trt"  # NGC server: tensorrt_plan (FP16 engine)

    @property
    def artifact(self) -> Artifact | None:
        """The artifact a GPU target serves natively (the CPU one picks by precision)."""
        return {ServeTarget.GPU_ONNX: Artifact.ONNX, ServeTarget.GPU_TRT: Artifact.TRT}.get(self)

    @property
    def config_name(self) -> str | None:
        """``tritonserver --model-config-name`` (``detector/configs/<name>.pbtxt``); None = config.pbtxt."""
        return None if self is ServeTarget.CPU else self.value

    @property
    def triton_backend(self) -> str:
        """The backend folder tritonserver needs for this target's detector."""
        return {ServeTarget.CPU: "python", ServeTarget.GPU_ONNX: "onnxruntime", ServeTarget.GPU_TRT: "tensorrt"}[self]
