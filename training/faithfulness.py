"""Is a saliency map faithful to the detector?  Measured on studies whose true pixels are known.

For each true-positive detection (matched to a true finding of the same class at IoU >= 0.5,
greedily by score, each finding once) of a held-out study with instance masks
(``cxr synth`` writes them), :func:`measure_detection` computes:

- **pointing game** (Zhang et al. 2016): the map's maximum, on the ORIGINAL grid, lies in the
  finding's true region or within their 15 px of it (``hit``; ``hit_strict`` without the band);
- **energy inside** (the energy-based pointing game of Score-CAM): the share of the map's mass
  inside the region, next to the region's share of the film.  The mass is the map's excess over
  its median: a D-RISE map is ``E[similarity | pixel kept]``, which equals the baseline
  ``E[similarity]`` wherever the pixel does not matter, so the raw map's mass is mostly that
  constant and would measure the region's area; the excess over the median is also exactly what
  the overlays colour;
- **deletion and insertion AUC** (RISE's protocol, Petsiuk et al. 2018): the model-input pixels of
  the film are removed (set to preprocessed black, as D-RISE masks them) in the map's order, most
  salient first, or inserted in that order into a blurred copy of the film (RISE's canvas:
  Gaussian, sigma = S/45, i.e. RISE's 5 px at 224), in ``steps`` equal steps; after each step
  the detector is asked again and the target's D-RISE similarity (best candidate's IoU x same
  class x score) is read, relative to the unperturbed film; the AUC is the curve's mean area.
  The baseline is a **random map** of the same smoothness (a ``g x g`` grid of uniform values
  upsampled bilinearly, as the masks are), so a win is the map's order, not its blobbiness;
- **model randomisation** (Adebayo et al., NeurIPS 2018): the target's map from the same
  architecture with re-initialised weights (built by the model factory, ``weights=None``, seed
  fixed), the same target, from an independent set of masks; Spearman rank correlation with the
  trained map, read next to the trained map's correlation with itself drawn from those other
  masks (its noise ceiling).  A map that does not move when the weights do explains the image,
  not the model.

All maps come from the served code: :meth:`cxr.serving.pipeline.Pipeline.explain` (what
``cxr_explain`` runs) and :func:`cxr.saliency.explain` for the randomised model, both on one
:class:`~cxr.saliency.DriseRun`.  Aggregation, intervals and tables: ``faithfulness_report.py``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from cxr.boxes import LetterboxRecord, box_iou
from cxr.postprocess import DetectionArrays
from cxr.saliency import (
    RawOutput, SaliencyConfig, black_value, content_box, explain, similarity, to_original,
)

Detector = Callable[[np.ndarray], RawOutput]
CURVE_MASKS = (50, 100, 200, 500, 1000)  # the cost curve's mask counts (issue 23)


@dataclass(frozen=True)
class FaithfulnessConfig:
    """What ``cxr evaluate --saliency N`` measures."""

    studies: int = 50  # held-out studies with true findings; each costs ~3 explanations (trained, random, curves)
    saliency: SaliencyConfig = SaliencyConfig()  # the served defaults
    score_threshold: float = 0.3  # the findings `cxr predict` shows (and explains) by default
    match_iou: float = 0.5
    tolerance_px: float = 15.0  # the pointing game's band around the region (Zhang et al.), ORIGINAL pixels
    steps: int = 16  # deletion/insertion points per curve: 4 x 17 detector passes per detection
    randomise_seed: int = 1234  # the re-initialised model's weights
    bootstrap: int = 1000
    curve_masks: tuple[int, ...] = ()  # mask counts of the cost curve; () = no curve
    curve_studies: int = 20


def match_true_positives(dets: DetectionArrays, boxes: np.ndarray, labels: Sequence[int],
                         iou: float = 0.5) -> list[tuple[int, int]]:
    """``(detection, finding)`` index pairs: same class, IoU >= ``iou``, greedy by descending score,
    each finding matched once (COCO's rule at one threshold).  Boxes: ORIGINAL pixels."""
    if not len(dets) or not len(boxes):
        return []
    overlaps = box_iou(dets.boxes, boxes)
    taken: set[int] = set()
    pairs = []
    for d in np.argsort(-np.asarray(dets.scores), kind="stable"):
        same = [j for j in range(len(boxes)) if labels[j] == int(dets.labels[d]) and j not in taken]
        best = max(same, key=lambda j: overlaps[d, j], default=None)
        if best is not None and overlaps[d, best] >= iou:
            taken.add(best)
            pairs.append((int(d), best))
    return pairs


# ------------------------------------------------------------------ localisation


def pointing_hit(heat: np.ndarray, region: np.ndarray, tolerance: float = 0.0) -> bool:
    """The map's maximum (the first one) lies inside ``region`` (bool, same grid), or within
    ``tolerance`` pixels of it (Zhang et al. count 15 px)."""
    y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
    if region[y, x]:
        return True
    ys, xs = np.nonzero(region)
    return bool(len(ys)) and float(np.min((ys - y) ** 2 + (xs - x) ** 2)) <= tolerance**2


def energy_inside(heat: np.ndarray, region: np.ndarray) -> float:
    """Share of the map's excess over its median that lies in ``region`` (0 for a flat map)."""
    excess = np.clip(heat - np.median(heat), 0.0, None)
    total = float(excess.sum())
    return float(excess[region].sum()) / total if total > 0 else 0.0


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho of two maps (average ranks for ties); 0 when either is flat (no order to share)."""
    ra, rb = _ranks(np.ravel(a)), _ranks(np.ravel(b))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return float(ra @ rb) / denom if denom > 0 else 0.0


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], len(xs)]
    ranks = np.empty(len(x), np.float64)
    ranks[order] = np.repeat((starts + ends - 1) / 2.0, ends - starts)
    return ranks


# ------------------------------------------------------------------ deletion / insertion


def random_map(shape: tuple[int, int], grid: int, rng: np.random.Generator) -> np.ndarray:
    """A map as smooth as D-RISE's: ``grid x grid`` uniform values, bilinear to ``shape``."""
    from PIL import Image

    cells = Image.fromarray(rng.random((grid, grid)).astype(np.float32), mode="F")
    return np.asarray(cells.resize((shape[1], shape[0]), Image.Resampling.BILINEAR), np.float32)


def _gaussian_matrix(n: int, sigma: float) -> np.ndarray:
    """``[n, n]`` row-normalised Gaussian blur with the edge held (a separable blur is ``K @ x @ K.T``)."""
    idx = np.arange(n)
    weights = np.exp(-0.5 * ((idx[:, None] - idx[None, :]) / sigma) ** 2)
    return (weights / weights.sum(1, keepdims=True)).astype(np.float32)


def blurred(image: np.ndarray, record: LetterboxRecord) -> np.ndarray:
    """RISE's insertion canvas: the film inside the letterbox blurred (sigma = S/45), padding as it was."""
    out = image.copy()
    h, w = record.resized_shape
    y0, x0 = int(record.pad_y), int(record.pad_x)
    sigma = record.size / 45.0
    rows, cols = _gaussian_matrix(h, sigma), _gaussian_matrix(w, sigma)
    for c in range(image.shape[0]):
        out[c, y0 : y0 + h, x0 : x0 + w] = rows @ image[c, y0 : y0 + h, x0 : x0 + w] @ cols.T
    return out


def perturbation_curves(image: np.ndarray, record: LetterboxRecord, target: np.ndarray, label: int,
                        orders: dict[str, np.ndarray], detector: Detector, *, black: np.ndarray,
                        steps: int, batch_size: int = 8) -> dict[str, np.ndarray]:
    """Deletion and insertion curves ``[steps + 1]`` for each ordering map in ``orders`` (``[h, w]`` on
    the film inside the letterbox, higher first): ``{"<name>_deletion": ..., "<name>_insertion": ...}``,
    each the target's similarity relative to the unperturbed film's.

    target: ``[4]`` xyxy in the letterbox frame; label: its 1-based class."""
    h, w = record.resized_shape
    y0, x0 = int(record.pad_y), int(record.pad_x)
    canvas = blurred(image, record)
    fractions = np.linspace(0.0, 1.0, steps + 1)
    images, names = [image[None]], []
    for name, order in orders.items():
        rank = np.empty(h * w, np.int64)
        rank[np.argsort(-np.ravel(order), kind="stable")] = np.arange(h * w)
        chosen = rank.reshape(h, w)[None] < np.round(fractions * h * w)[:, None, None]  # [steps+1, h, w]
        for kind, start, end in (("deletion", image, black), ("insertion", canvas, image)):
            batch = np.repeat(start[None], steps + 1, axis=0)
            region = batch[:, :, y0 : y0 + h, x0 : x0 + w]
            target_region = np.broadcast_to(end, image.shape)[:, y0 : y0 + h, x0 : x0 + w]
            batch[:, :, y0 : y0 + h, x0 : x0 + w] = np.where(chosen[:, None], target_region[None], region)
            images.append(batch)
            names.append(f"{name}_{kind}")
    stack = np.concatenate(images)
    scores = np.concatenate([
        similarity(target[None], np.array([label]), detector(stack[s : s + batch_size]), content_box(record))[:, 0]
        for s in range(0, len(stack), batch_size)])
    reference = max(float(scores[0]), 1e-6)  # the film itself: the detection exists, so > 0
    return {name: scores[1 + i * (steps + 1) : 1 + (i + 1) * (steps + 1)] / reference for i, name in enumerate(names)}


def auc(curve: np.ndarray) -> float:
    """Area under a curve sampled at equal steps over ``[0, 1]`` (trapezoids)."""
    return float(np.trapezoid(curve, dx=1.0 / (len(curve) - 1))) if hasattr(np, "trapezoid") else \
        float(np.trapz(curve, dx=1.0 / (len(curve) - 1)))


# ------------------------------------------------------------------ the re-initialised model


def randomised_checkpoint(ckpt, seed: int):
    """The checkpoint with the weights of a fresh model of its architecture (``weights=None``,
    torch seed ``seed``), whose graph keeps every candidate (each proposal x each class) instead
    of the top ``candidates``: an untrained head gives every proposal nearly the same softmax, so
    the top 300 are all one class and any other target would get a flat, all-zero map -- a
    vacuous "pass" of the check."""
    import torch

    from cxr.training.model import build_model

    every = ckpt.model_config.rpn_post_nms_top_n_test * (ckpt.model_config.num_classes - 1)
    config = replace(ckpt.model_config, candidates=every)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build_model(config)
    return replace(ckpt, model_config=config, state=model.state_dict())


def detector_for(ckpt, runtime: str, workdir=None) -> Detector:
    """``ckpt``'s serving graph in process: ``onnx`` (exported into ``workdir``, run by ONNX Runtime as
    the served CPU detector runs it) or ``torch`` (the eager graph the ONNX file is traced from)."""
    from pathlib import Path

    if runtime == "torch":
        from cxr.export.torch_detector import TorchDetector

        return TorchDetector(ckpt)
    if runtime != "onnx":
        raise ValueError(f"saliency runtime must be 'onnx' or 'torch', got {runtime!r}")
    from cxr.export.onnx_export import export_onnx
    from cxr.serving.runtime import OrtDetector

    path = Path(workdir) / f"{ckpt.model_version}-{ckpt.model_config.candidates}-{id(ckpt)}.onnx"
    return OrtDetector(export_onnx(ckpt, path))


# ------------------------------------------------------------------ one study


@dataclass(frozen=True)
class StudyMaps:
    """One study's explanation by the in-process twin of ``cxr_explain``."""

    image: np.ndarray  # [C, S, S] preprocessed
    record: LetterboxRecord
    detections: DetectionArrays  # ORIGINAL pixels
    maps: np.ndarray  # [D, h, w] on the film inside the letterbox
    seconds: float


def explained(pipeline, path, config: SaliencyConfig) -> StudyMaps:
    """Decode, detect and explain one study with ``pipeline`` (a :class:`~cxr.serving.pipeline.Pipeline`):
    :meth:`~cxr.serving.pipeline.Pipeline.explain`'s steps, keeping the preprocessed image for the curves."""
    import asyncio

    from cxr.serving.explain import explain_study

    async def detect(batch: np.ndarray) -> RawOutput:
        return pipeline.detector(batch)

    start = time.perf_counter()  # a study's cost: decoding and preprocessing included
    images, records = pipeline.prepare([path])
    dets, maps = asyncio.run(explain_study(images[0], records[0], detect, postprocess=pipeline.post,
                                           saliency=config, preprocess=pipeline.pre))
    seconds = time.perf_counter() - start
    return StudyMaps(images[0], LetterboxRecord.from_array(records[0]), dets, maps, seconds)


def measure_detection(sm: StudyMaps, index: int, region: np.ndarray, *, detector: Detector,
                      random_detector: Detector | None, config: FaithfulnessConfig, preprocess,
                      rng: np.random.Generator) -> dict:
    """Every measure of detection ``index`` of ``sm`` against its true ``region`` (bool, ORIGINAL grid)."""
    heat = to_original(sm.maps[index], sm.record)
    row = {"score": float(sm.detections.scores[index]), "hit": pointing_hit(heat, region, config.tolerance_px),
           "hit_strict": pointing_hit(heat, region),
           "energy": energy_inside(heat, region), "area": float(region.mean())}
    target = sm.record.to_letterbox(sm.detections.boxes[index : index + 1])[0]
    label = int(sm.detections.labels[index])
    orders = {"map": sm.maps[index], "random": random_map(sm.maps[index].shape, config.saliency.grid, rng)}
    curves = perturbation_curves(sm.image, sm.record, target, label, orders, detector,
                                 black=black_value(preprocess), steps=config.steps)
    row.update({name: auc(curve) for name, curve in curves.items()})
    if random_detector is not None:
        row.update(randomisation(sm, index, detector, random_detector, config.saliency, preprocess))
    return row


def other_masks(saliency: SaliencyConfig) -> SaliencyConfig:
    """The same settings with the next seed: an independent draw of the masks."""
    return replace(saliency, seed=(saliency.seed + 1) % 2**63)


def randomisation(sm: StudyMaps, index: int, detector: Detector, random_detector: Detector,
                  saliency: SaliencyConfig, preprocess) -> dict:
    """Adebayo et al.'s check for detection ``index``: ``rho``, Spearman's rho of the trained map with the
    re-initialised network's map of the same target, and ``rho_self``, with the trained network's own map
    drawn again -- both from an independent set of masks (:func:`other_masks`).  With the same masks the
    two maps share the draw's Monte-Carlo pattern (every map is a weighted sum of the same masks), which
    correlates them whatever the weights; ``rho_self`` is what the maps' noise leaves of a perfect
    correlation, the ceiling against which ``rho`` is read."""
    one = DetectionArrays(sm.detections.boxes[index : index + 1], sm.detections.scores[index : index + 1],
                          sm.detections.labels[index : index + 1])
    other = other_masks(saliency)
    rand = explain(sm.image, sm.record, one, random_detector, other, preprocess)[0]
    again = explain(sm.image, sm.record, one, detector, other, preprocess)[0]
    rho = rank_correlation(sm.maps[index], rand)
    return {"rho": rho, "rho_abs": abs(rho), "rho_self": rank_correlation(sm.maps[index], again)}


def measure_studies(pipeline, studies, class_names: Sequence[str], config: FaithfulnessConfig, *,
                    random_detector: Detector | None = None, progress: bool = False) -> list[dict]:
    """One row per true-positive detection of ``studies`` (those with boxes and masks) at the configured threshold."""
    from tqdm import tqdm

    rng = np.random.default_rng(config.saliency.seed)
    rows = []
    ids = {name: i + 1 for i, name in enumerate(class_names)}
    for study in tqdm(studies, desc="saliency", disable=not progress):
        sm = explained(pipeline, study.path, config.saliency)
        truth = [ids[name] for name in study.box_labels]
        for d, j in match_true_positives(sm.detections, study.boxes, truth, config.match_iou):
            row = measure_detection(sm, d, study.masks.mask(j), detector=pipeline.detector,
                                    random_detector=random_detector, config=config, preprocess=pipeline.pre, rng=rng)
            rows.append({"study": study.image_id, "class": study.box_labels[j], "seconds": sm.seconds, **row})
    return rows


def cost_curve(pipeline, studies, class_names: Sequence[str], config: FaithfulnessConfig, *,
               progress: bool = False) -> list[dict]:
    """Pointing game, energy inside and seconds per study against the number of masks: one row per count."""
    from tqdm import tqdm

    ids = {name: i + 1 for i, name in enumerate(class_names)}
    rows = []
    for masks in config.curve_masks:
        saliency = replace(config.saliency, masks=int(masks))
        hits, energy, area, seconds = [], [], [], []
        for study in tqdm(studies, desc=f"cost curve {masks} masks", disable=not progress):
            sm = explained(pipeline, study.path, saliency)
            seconds.append(sm.seconds)
            truth = [ids[name] for name in study.box_labels]
            for d, j in match_true_positives(sm.detections, study.boxes, truth, config.match_iou):
                heat, region = to_original(sm.maps[d], sm.record), study.masks.mask(j)
                hits.append(pointing_hit(heat, region, config.tolerance_px))
                energy.append(energy_inside(heat, region))
                area.append(float(region.mean()))
        rows.append({"masks": int(masks), "studies": len(studies), "detections": len(hits),
                     "pointing_game": float(np.mean(hits)) if hits else None,
                     "energy_ratio": float(np.mean(energy) / np.mean(area)) if hits else None,
                     "seconds_per_study": float(np.mean(seconds)) if seconds else None})
    return rows
