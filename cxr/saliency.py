"""D-RISE saliency maps, one per detection: the numerics, written once and torch-free.

D-RISE (Petsiuk et al., "Black-box Explanation of Object Detectors via Saliency Maps",
CVPR 2021) asks the detector about ``N`` randomly masked copies of the study and weighs
each mask by how much of a target detection survives it:

- masks (:func:`random_masks`): ``N`` binary ``g x g`` grids, each cell kept with
  probability ``p``, upsampled bilinearly (so the edges are soft) to cells of
  ``ceil(S / g)`` pixels plus one, and cut to ``S x S`` at a random shift; seeded, made
  once per ``(S, N, g, p, seed)`` and cached;
- masked image (:func:`masked_images`): the preprocessed ``[C, S, S]`` input blended
  towards the normalised value of a black film pixel (what preprocess makes of black,
  :func:`black_value`) where the mask is 0;
- similarity (:func:`similarity`): for each masked pass and target, the best raw
  candidate of the target's class by IoU x score (see its docstring for why not the
  paper's cosine of class vectors);
- map (:func:`saliency_maps`): ``sum_i w_i M_i / sum_i M_i``, the paper's weighted sum of
  masks normalised by how often each pixel was kept (RISE divides by its expectation
  ``N p``; the actual count removes a pattern of the masks that every map would share):
  an estimate of ``E[w | pixel kept]``, in the similarity's units ``[0, 1]``, so maps
  compare across detections, studies and mask counts.

Frames: targets and candidates are compared in the ``S x S`` letterbox frame (final
detections, which are in ORIGINAL pixels, go there with their
:class:`~cxr.boxes.LetterboxRecord`); a map is returned on the letterbox's content
region (the resized film without padding, ``record.resized_shape``), and
:func:`to_original` brings it to the ORIGINAL pixel grid -- the one implementation the
client, the overlays and evaluation use.  One set of masked passes explains every
detection of the study (:class:`DriseRun`); the served explainer
(``model_repository/explainer``) and the in-process :func:`explain` drive the same
:class:`DriseRun`, so the two cannot drift apart.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np

from cxr.boxes import LetterboxRecord, box_iou
from cxr.errors import InvalidOptionError
from cxr.postprocess import DetectionArrays
from cxr.preprocess import PreprocessConfig, normalize

RawOutput = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # the detector graph's boxes, scores, labels, valid

MAX_MASKS = 5000  # ~ minutes per study on a CPU even for the tiny model; the paper's "thousands"
MAX_GRID = 64


@dataclass(frozen=True)
class SaliencyConfig:
    """What D-RISE samples; the served defaults are stamped into the explainer's config."""

    masks: int = 200  # N: XAITK's demo setting; the default is to be chosen from the cost curve (issue 23)
    grid: int = 8  # g: cells per side; 8 x 8 on a 512 px input gives 64 px cells, about a large nodule
    keep: float = 0.5  # p: the paper's and RISE's probability that a cell is kept
    seed: int = 0  # the same seed gives the same masks, so the same map

    def __post_init__(self) -> None:
        for name, value, low, high in (("masks", self.masks, 1, MAX_MASKS), ("grid", self.grid, 2, MAX_GRID)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
                raise InvalidOptionError(f"saliency {name} must be an integer in [{low}, {high}], got {value!r}")
        if not (isinstance(self.keep, (int, float)) and 0.0 < float(self.keep) < 1.0):
            raise InvalidOptionError(f"saliency keep probability must be in (0, 1), got {self.keep!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or not 0 <= self.seed < 2**63:
            raise InvalidOptionError(f"saliency seed must be an integer in [0, 2**63), got {self.seed!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SaliencyConfig:
        return cls(**{k: d[k] for k in ("masks", "grid", "keep", "seed") if k in d})


# ----------------------------------------------------------------------------- masks


def _interpolation(positions: np.ndarray, cells: int) -> np.ndarray:
    """Bilinear weights ``[len(positions), cells]`` of the grid cells at fractional ``positions``
    (cell centres at 0, 1, ..., cells - 1; outside them the edge cell's value is held)."""
    u = np.clip(positions, 0.0, cells - 1.0)
    lo = np.minimum(np.floor(u).astype(np.int64), cells - 1)
    hi = np.minimum(lo + 1, cells - 1)
    t = (u - lo).astype(np.float32)
    weights = np.zeros((len(positions), cells), np.float32)
    rows = np.arange(len(positions))
    np.add.at(weights, (rows, lo), 1.0 - t)
    np.add.at(weights, (rows, hi), t)
    return weights


@lru_cache(maxsize=4)  # a server sees one size and, unless asked otherwise, one setting
def random_masks(size: int, config: SaliencyConfig) -> np.ndarray:
    """``N`` soft masks ``[N, S, S]`` float16 in ``[0, 1]`` (1 = pixel kept), cached and read-only.

    Each is a ``g x g`` grid of cells kept with probability ``p``, upsampled bilinearly
    to ``g + 1`` cells of ``ceil(S / g)`` pixels (pixel centres mapped to grid
    coordinates) and cut to ``S x S`` at a random shift below one cell, so cell edges
    fall anywhere (RISE's construction).  float16 halves the cache (``N * S * S * 2``
    bytes: 26 MB for 200 masks at 256 px, 105 MB at 512 px); both the served and the
    in-process paths read these same values.
    """
    n, g = int(config.masks), int(config.grid)
    rng = np.random.default_rng(config.seed)
    grids = (rng.random((n, g, g)) < config.keep).astype(np.float32)
    cell = math.ceil(size / g)
    shifts = rng.integers(0, cell, size=(n, 2))
    scale = g / ((g + 1) * cell)  # grid cells per upsampled pixel
    pixels = np.arange(size, dtype=np.float64)
    masks = np.empty((n, size, size), np.float16)
    for i in range(n):
        rows = _interpolation((shifts[i, 0] + pixels + 0.5) * scale - 0.5, g)
        cols = _interpolation((shifts[i, 1] + pixels + 0.5) * scale - 0.5, g)
        masks[i] = rows @ grids[i] @ cols.T
    masks.setflags(write=False)
    return masks


def black_value(config: PreprocessConfig) -> np.ndarray:
    """``[C, 1, 1]``: what preprocess makes of a black film pixel (0 in ``[0, 1]``)."""
    return normalize(np.zeros((1, 1), np.float32), config)


def masked_images(image: np.ndarray, masks: np.ndarray, black: np.ndarray) -> np.ndarray:
    """``image [C, S, S]`` (preprocessed) under ``masks [n, S, S]`` -> ``[n, C, S, S]`` float32:
    ``black + M * (image - black)``, i.e. the film where kept, black where masked."""
    black = np.asarray(black, np.float32)
    out = np.empty((len(masks), *image.shape), np.float32)
    # in place, one [n, C, S, S] buffer: the blend is a third of a masked pass's cost otherwise
    np.multiply(masks.astype(np.float32)[:, None], (image - black)[None], out=out)
    out += black[None]
    return out


# ------------------------------------------------------------------------ similarity


def similarity(targets: np.ndarray, target_labels: np.ndarray, raw: RawOutput,
               content: tuple[float, float, float, float]) -> np.ndarray:
    """D-RISE weights ``[n, D]``: for each masked pass and target, the best candidate's
    ``IoU(target, candidate) x [same class] x score``.

    targets: ``[D, 4]`` xyxy in the ``S x S`` letterbox frame; target_labels ``[D]``
    (1-based class ids); raw: the detector's output for the ``n`` masked images
    (``boxes [n, K, 4]`` in the same frame, ``scores``, ``labels [n, K]``, ``valid``);
    content: the film's rectangle in that frame (candidates are clipped to it, as
    postprocess clips boxes to the film before comparing them).

    The paper compares class-probability vectors by cosine and multiplies by an
    objectness score.  Our graph returns, per candidate, one class and its softmax
    score (torchvision emits one candidate per proposal and class), not the vector,
    and Faster R-CNN has no objectness.  A target is one class, so its vector is
    one-hot; the cosine with a proposal's vector ``P`` is then ``P[c] / |P|``, and
    ``P[c]`` is exactly the score of that proposal's class-``c`` candidate.  So a
    candidate of another class counts 0 and one of the target's class counts its score
    (the norm ``|P|``, between ``1/sqrt(C+1)`` and 1, is not available and is dropped).
    XAITK's DRISEScoring recommends the same for single-label detectors (one-hot class
    vector, the confidence as objectness).
    """
    boxes, scores, labels, valid = raw[:4]  # a Mask R-CNN's fifth output (masks) plays no part
    n, k = scores.shape[:2]
    d = len(targets)
    if n == 0 or k == 0 or d == 0:
        return np.zeros((n, d), np.float32)
    x1, y1, x2, y2 = content
    cand = np.asarray(boxes, np.float32).reshape(n * k, 4).copy()
    cand[:, [0, 2]] = cand[:, [0, 2]].clip(x1, x2)
    cand[:, [1, 3]] = cand[:, [1, 3]].clip(y1, y2)
    iou = np.nan_to_num(box_iou(cand, targets)).reshape(n, k, d)
    live = np.arange(k)[None, :] < np.asarray(valid).reshape(n, 1)
    score = np.where(live & np.isfinite(scores), scores, 0.0).astype(np.float32)
    same = np.asarray(labels).reshape(n, k, 1) == np.asarray(target_labels).reshape(1, 1, d)
    return (iou * same * score[:, :, None]).max(axis=1).astype(np.float32)


def saliency_maps(weights: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """``[D, S, S]`` float32: ``sum_i w[i, d] M_i / sum_i M_i`` (see the module doc).

    RISE divides by ``N p``, the expected coverage; dividing by the masks' actual coverage
    makes the map exactly ``E[w]`` wherever ``w`` does not depend on the pixel.  With ``N p``
    the map carries ``E[w] x (coverage / N p)``, a pattern of the masks alone (about
    ``sqrt((1 - p) / (N p))``, 7 % at 200 masks) that every map made with the same masks
    shares -- measured: trained and re-initialised models' maps of two cardiomegaly findings then rank-
    correlated at 0.68 (training/README.md, "Faithfulness")."""
    n, d = weights.shape
    size = masks.shape[1:]
    out = np.zeros((d, size[0] * size[1]), np.float32)
    for start in range(0, n, 32):  # float16 masks go to float32 a few at a time (memory)
        chunk = masks[start : start + 32].reshape(-1, size[0] * size[1]).astype(np.float32)
        out += weights[start : start + 32].T.astype(np.float32) @ chunk
    coverage = mask_coverage(masks).reshape(-1)
    seen = coverage > 1e-3
    baseline = weights.mean(axis=0, dtype=np.float64).astype(np.float32)[:, None] if n else np.zeros((d, 1), np.float32)
    out = np.where(seen[None], out / np.where(seen, coverage, 1.0)[None], baseline)  # never kept: no evidence
    return out.astype(np.float32).reshape(d, *size)


def mask_coverage(masks: np.ndarray) -> np.ndarray:
    """``sum_i M_i`` ``[S, S]`` float32, computed once per cached (read-only) mask set."""
    key = id(masks)
    cached = _COVERAGE.get(key)
    if cached is not None and cached[0] is masks:
        return cached[1]
    total = np.zeros(masks.shape[1:], np.float32)
    for start in range(0, len(masks), 32):
        total += masks[start : start + 32].astype(np.float32).sum(axis=0)
    if len(_COVERAGE) >= 4:  # as many as random_masks keeps
        _COVERAGE.pop(next(iter(_COVERAGE)))
    _COVERAGE[key] = (masks, total)
    return total


_COVERAGE: dict[int, tuple[np.ndarray, np.ndarray]] = {}


# ------------------------------------------------------------------------ frames


def content_box(record: LetterboxRecord) -> tuple[float, float, float, float]:
    """The film's rectangle ``(x1, y1, x2, y2)`` in the ``S x S`` letterbox frame."""
    h, w = record.resized_shape
    return (record.pad_x, record.pad_y, record.pad_x + w, record.pad_y + h)


def crop_content(maps: np.ndarray, record: LetterboxRecord) -> np.ndarray:
    """``[..., S, S]`` letterbox maps -> ``[..., h, w]`` on the film only (``record.resized_shape``)."""
    h, w = record.resized_shape
    y0, x0 = int(record.pad_y), int(record.pad_x)
    return np.ascontiguousarray(maps[..., y0 : y0 + h, x0 : x0 + w])


def to_original(saliency: np.ndarray, record: LetterboxRecord) -> np.ndarray:
    """One content-region map ``[h, w]`` -> ``[orig_h, orig_w]`` float32 on the ORIGINAL pixel grid.

    The inverse of preprocess's resize (:func:`cxr.preprocess.letterbox`): the same
    PIL bilinear filter, the other way, so pixel ``(i, j)`` of the film and the map at
    ``(i, j)`` talk about the same place.  The client, the overlays and evaluation all
    use this one function.
    """
    from PIL import Image

    h, w = record.resized_shape
    arr = np.asarray(saliency, np.float32)
    if arr.shape != (h, w):
        raise ValueError(f"a saliency map for this study is [{h}, {w}] (the film inside the {record.size} px "
                         f"letterbox), got {list(arr.shape)}: pass one map of the study's SALIENCY output")
    if (h, w) == (record.orig_h, record.orig_w):
        return arr.copy()
    img = Image.fromarray(np.ascontiguousarray(arr), mode="F")
    return np.asarray(img.resize((record.orig_w, record.orig_h), Image.Resampling.BILINEAR), np.float32)


# ------------------------------------------------------------------------ one study


class DriseRun:
    """One study's D-RISE explanation, fed the detector's answers batch by batch.

    image: the preprocessed ``[C, S, S]`` input; record: its letterbox record;
    detections: the study's final detections (ORIGINAL pixels), the targets.
    :meth:`batches` says what to send, :meth:`masked` builds a batch, :meth:`add`
    takes the detector's raw output for it (in any order), :meth:`maps` gives
    ``[D, h, w]`` on the content region once every batch is in.
    """

    def __init__(self, image: np.ndarray, record: LetterboxRecord, detections: DetectionArrays,
                 config: SaliencyConfig, preprocess: PreprocessConfig) -> None:
        if image.shape != (preprocess.channels, preprocess.size, preprocess.size):
            raise ValueError(f"D-RISE needs the preprocessed [{preprocess.channels}, {preprocess.size}, "
                             f"{preprocess.size}] input, got {list(image.shape)}")
        self.image, self.record, self.config = image, record, config
        self.masks = random_masks(preprocess.size, config)
        self.black = black_value(preprocess)
        self.targets = record.to_letterbox(detections.boxes)
        self.labels = np.asarray(detections.labels, np.int64)
        self.weights = np.zeros((config.masks, len(detections)), np.float32)
        self._done = np.zeros(config.masks, bool)

    def batches(self, size: int) -> list[slice]:
        """Mask index ranges of at most ``size`` (the detector's max batch); none without a target."""
        if not len(self.labels):
            return []  # nothing to explain: no masked pass is needed
        return [slice(s, min(s + size, self.config.masks)) for s in range(0, self.config.masks, size)]

    def masked(self, part: slice) -> np.ndarray:
        return masked_images(self.image, self.masks[part], self.black)

    def add(self, part: slice, raw: RawOutput) -> None:
        self.weights[part] = similarity(self.targets, self.labels, raw, content_box(self.record))
        self._done[part] = True

    @property
    def answered(self) -> int:
        """Masked passes whose answer is in."""
        return int(self._done.sum())

    def maps(self) -> np.ndarray:
        """``[D, h, w]`` float32 on the content region (see :func:`to_original`)."""
        if len(self.labels) and not self._done.all():
            raise RuntimeError(f"{int((~self._done).sum())} of {self.config.masks} masked passes have no answer yet")
        return crop_content(saliency_maps(self.weights, self.masks), self.record)


def explain(image: np.ndarray, record: LetterboxRecord, detections: DetectionArrays,
            detector: Callable[[np.ndarray], RawOutput], config: SaliencyConfig, preprocess: PreprocessConfig,
            *, batch_size: int = 8) -> np.ndarray:
    """In process: every detection's map ``[D, h, w]`` with ``detector`` (``[B, C, S, S]`` -> raw output)."""
    run = DriseRun(image, record, detections, config, preprocess)
    for part in run.batches(batch_size):
        run.add(part, detector(run.masked(part)))
    return run.maps()
