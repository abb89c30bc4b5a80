"""``cxr export {onnx,onnx-int8,trt}``: build an artifact, check parity, place it.

Parity (``--check``) runs PyTorch (the eager serving graph, which equals the
trained torchvision model exactly) and the artifact through the same ``cxr``
preprocess and postprocess on held-out studies (the test split of ``--data``)
and compares detections; a failure raises :class:`ParityError` with the table of
the worst images.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxr.contract import Artifact, Precision, Step
from cxr.errors import InvalidFileError, InvalidOptionError
from cxr.labels import LabelSetName, annotation_labelset
from cxr.export.parity import TOLERANCES, ParityReport, Tolerance, compare
from cxr.export.quantize import DEFAULT_BUDGET
from cxr.export.repository import artifact_path, check_compatible, ensure_repository, place_artifact
from cxr.serving.paths import PATHS_FILE

log = logging.getLogger(__name__)

KINDS = Artifact.values()


class ParityError(RuntimeError):
    def __init__(self, report: ParityReport) -> None:
        super().__init__("parity check failed:\n" + report.table())
        self.report = report


@dataclass
class ExportResult:
    kind: Artifact
    path: Path
    parity: ParityReport | None = None

    def to_dict(self) -> dict:
        return {"kind": str(self.kind), "path": str(self.path), "parity": None if self.parity is None else self.parity.to_dict()}


def _studies(data: str | Path, split: str, n: int, labelset_name: str | LabelSetName):
    from cxr.training.annotations import NIHDataset

    ds = NIHDataset.from_dir(data, labelset=labelset_name, require_images=True)
    studies = [s for s in ds.detection_studies(split)][:n]
    if not studies:
        raise InvalidFileError(f"{data}: split {split!r} has no images to use")
    return studies


def reference_detections(ckpt, images, *, batch_size: int = 4) -> list:
    """PyTorch's detections (the eager serving graph) of ``images`` (paths or decoded studies): parity's reference."""
    from cxr.serving.pipeline import Pipeline
    from cxr.export.torch_detector import TorchDetector

    return Pipeline(TorchDetector(ckpt), ckpt.preprocess, ckpt.postprocess)(images, batch_size=batch_size)


def check_parity(ckpt, detector, studies, *, tolerance: Tolerance, batch_size: int = 4, images=None,
                 reference=None) -> ParityReport:
    """PyTorch vs ``detector`` on ``studies`` through the same pre/postprocessing.

    When several detectors are checked on the same studies, pass them decoded (``images``) and PyTorch's
    answer (``reference``, :func:`reference_detections`) once; by default both are made here."""
    from cxr.serving.pipeline import Pipeline
    from cxr.training.engine import ground_truth

    images = [s.path for s in studies] if images is None else images
    if reference is None:
        reference = reference_detections(ckpt, images, batch_size=batch_size)
    artifact = Pipeline(detector, ckpt.preprocess, ckpt.postprocess)(images, batch_size=batch_size)
    segment = ckpt.model_config.task == "segment"  # masks too: matched-mask IoU, segm AP against the data's masks
    gts = ground_truth(studies, ckpt.labelset, masks=segment)  # segm AP only where every box has its mask
    return compare(reference, artifact, names=[s.image_id for s in studies], ground_truth=gts,
                   class_names=ckpt.class_names, tolerance=tolerance)


def calibration_batches(ckpt, studies) -> list[np.ndarray]:
    """One ``[1, C, S, S]`` model input per study, through the serving preprocessing."""
    from cxr.decode.image import decode_image
    from cxr.preprocess import preprocess

    return [preprocess(decode_image(s.path), ckpt.preprocess)[0][None] for s in studies]


class Int8Disagreement:
    """``evaluate(int8_path)``: the fraction of FP32 detections on ``studies`` that INT8 changes.

    A detection (any above the postprocess score threshold: mAP counts all of them)
    is unchanged when an INT8 detection of its label overlaps it at IoU >= 0.5 (the
    parity matcher) with a score within ``score_step``; missing, moved, re-scored and
    extra detections all count as changed; a Mask R-CNN's detection also changes when its mask
    moves below IoU ``mask_iou`` with the FP32 one.  Studies are decoded once; FP32 runs once.

    ``noise_floor`` is the same measure for the FP32 model itself with Gaussian noise
    of half an 8-bit grey level added to its input: how much a model changes under a
    perturbation smaller than its input's precision.  An INT8 model cannot be expected
    to do better; a weakly trained detector can be far above zero.
    """

    def __init__(self, ckpt, fp32_path: str | Path, studies, *, score_step: float = 0.05, mask_iou: float = 0.8,
                 seed: int = 0) -> None:
        from cxr.serving.pipeline import Pipeline
        from cxr.serving.runtime import OrtDetector
        from cxr.decode.image import decode_image

        self.ckpt, self.score_step, self.mask_iou = ckpt, score_step, mask_iou
        self.images = [decode_image(s.path) for s in studies]
        fp32 = OrtDetector(fp32_path)
        self.reference = Pipeline(fp32, ckpt.preprocess, ckpt.postprocess)(self.images)
        sigma = 0.5 / 255 / min(ckpt.preprocess.std)
        rng = np.random.default_rng(seed)
        self.noise_floor = self._changed(lambda x: fp32(x + rng.normal(0.0, sigma, x.shape).astype(np.float32)))

    def _changed(self, detector) -> float:
        from cxr.export.parity import match_detections
        from cxr.masks import crop_iou
        from cxr.serving.pipeline import Pipeline

        report = self.ckpt.postprocess.score_threshold
        margin = min(TOLERANCES[Precision.INT8].score_margin, report)
        changed = total = 0
        for r, t in zip(self.reference, Pipeline(detector, self.ckpt.preprocess, self.ckpt.postprocess)(self.images)):
            pairs, n_ref, n_test = match_detections(r, t, TOLERANCES[Precision.INT8].match_iou, report_score=report, score_margin=margin)
            kept = sum(1 for i, j in pairs if abs(float(r.scores[i]) - float(t.scores[j])) <= self.score_step
                       and (r.masks is None or crop_iou(r.masks, i, t.masks, j) >= self.mask_iou))
            total += max(n_ref, n_test)
            changed += max(n_ref, n_test) - kept
        return changed / total if total else 0.0

    def __call__(self, path: Path) -> float:
        from cxr.serving.runtime import OrtDetector

        return self._changed(OrtDetector(path))


def run_export(
    kind: Artifact | str,
    checkpoint: str | Path,
    *,
    repository: str | Path | None = "model_repository",
    out: str | Path | None = None,
    data: str | Path | None = None,
    check: bool = False,
    check_images: int = 32,
    calibration_images: int = 32,
    int8_search_images: int = 32,
    int8_budget: float | None = DEFAULT_BUDGET,
    progress: bool = False,
    force: bool = False,
    batch_profile=None,
) -> ExportResult:
    """Export ``checkpoint`` as ``kind``; write to ``out`` or into ``repository``."""
    from cxr.training.checkpoint import load_checkpoint

    kind = _checked_options(kind, check=check, data=data, int8_budget=int8_budget)
    ckpt = load_checkpoint(checkpoint)
    meta = ckpt.metadata()
    if repository is not None and out is None:
        check_compatible(repository, meta, force=force)  # fail before minutes of work
    labelset = annotation_labelset(ckpt.labelset_name)
    held_out = _studies(data, "test", check_images, labelset) if check else None

    with tempfile.TemporaryDirectory() as tmp:
        if kind is Artifact.TRT:
            built, make_detector = _build_trt(ckpt, Path(tmp), meta, batch_profile)
        elif kind is Artifact.ONNX_INT8:
            calib = calibration_batches(ckpt, _studies(data, "train", calibration_images, labelset))
            # Mixed precision is chosen on the validation split; parity (--check) runs on test.
            search = None if int8_budget is None else _studies(data, "val", int8_search_images, labelset)
            built, make_detector = _build_int8(ckpt, Path(tmp), calib, search, budget=int8_budget, progress=progress)
        else:
            from cxr.export.onnx_export import export_onnx
            from cxr.serving.runtime import OrtDetector

            built, make_detector = export_onnx(ckpt, Path(tmp) / Artifact.ONNX.file), OrtDetector

        report = None
        if check:
            report = check_parity(ckpt, make_detector(built), held_out, tolerance=TOLERANCES[kind.precision])
            log.info("parity on %d images: %s", report.n_images, "PASS" if report.passed else "FAIL")
            if not report.passed:
                raise ParityError(report)
        extra = {"precision": kind.precision.value}
        if report is not None:
            extra["parity"] = {k: getattr(report, k) for k in ("n_images", "match_rate", "max_score_delta", "max_box_dev_px", "map_delta")}
            if report.masks is not None:
                extra["parity"] |= {"mask_iou_median": report.masks.iou_median, "segm_ap_delta": report.masks.segm_ap_delta}
        dest = _deliver(kind, Path(built), out=out, repository=repository, meta=meta, extra=extra, force=force)
    return ExportResult(kind, dest, report)


def _checked_options(kind: Artifact | str, *, check: bool, data, int8_budget: float | None) -> Artifact:
    """``kind`` as an :class:`Artifact`, after refusing option combinations that cannot work."""
    try:
        kind = Artifact(kind)
    except ValueError as exc:
        raise InvalidOptionError(f"export {exc}") from exc
    if check and data is None:
        raise InvalidOptionError("--check needs --data DIR: parity runs on the held-out (test) studies of that dataset")
    if int8_budget is not None and not 0.0 < int8_budget <= 1.0:
        raise InvalidOptionError(f"--int8-budget is a fraction of detections in (0, 1], got {int8_budget}")
    if kind is Artifact.ONNX_INT8 and data is None:
        raise InvalidOptionError("onnx-int8 needs --data DIR: INT8 is calibrated on training images of that dataset")
    return kind


def _build_trt(ckpt, tmp: Path, meta: dict, batch_profile):
    """A TensorRT FP16 engine in ``tmp`` (via the FP32 ONNX) and the detector that runs it."""
    from cxr.export.onnx_export import export_onnx
    from cxr.export.tensorrt import BatchProfile, TrtDetector, build_engine, require_tensorrt

    require_tensorrt()  # before spending time on the ONNX export
    fp32 = tmp / Artifact.ONNX.file
    export_onnx(ckpt, fp32)
    built = build_engine(fp32, tmp / Artifact.TRT.file, channels=ckpt.preprocess.channels, size=ckpt.preprocess.size,
                         profile=batch_profile or BatchProfile(), metadata=meta)
    return built, TrtDetector


def _build_int8(ckpt, tmp: Path, calib: list[np.ndarray], search_studies, *, budget: float | None, progress: bool):
    """An INT8 ONNX in ``tmp`` and the detector that runs it.

    With ``search_studies`` (a budget was given) the layer groups to quantize are chosen by
    :class:`Int8Disagreement` on them; without, every group is quantized (``--int8-all``).
    """
    from cxr.export.onnx_export import export_onnx
    from cxr.export.quantize import quantize_int8
    from cxr.serving.runtime import OrtDetector

    fp32 = tmp / Artifact.ONNX.file
    export_onnx(ckpt, fp32)
    evaluate = None if search_studies is None else Int8Disagreement(ckpt, fp32, search_studies)
    built = quantize_int8(fp32, tmp / Artifact.ONNX_INT8.file, calib, evaluate=evaluate, budget=budget or 0.0, progress=progress)
    return built, OrtDetector


def _deliver(kind: Artifact, built: Path, *, out, repository, meta: dict, extra: dict, force: bool) -> Path:
    """Copy ``built`` to ``out``, or place it in ``repository`` (with its configs and metadata)."""
    if out is not None:
        dest = Path(out)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(built.read_bytes())
        return dest
    dest = place_artifact(repository, kind, built, meta, force=force, extra=extra)
    ensure_repository(repository, meta)
    stale = Path(repository) / Step.DETECTOR / "1" / PATHS_FILE
    if stale.is_file():  # its verdicts are of the files just replaced: serving falls back to ORT FP32 until re-checked
        stale.unlink()
        log.warning("removed %s (its parity verdicts were of the replaced files); run `cxr export paths` again", stale)
    if kind is Artifact.TRT:
        from cxr.export.tensorrt import engine_metadata_path

        engine_metadata_path(dest).write_text(engine_metadata_path(built).read_text())
    return dest


__all__ = ["KINDS", "ExportResult", "ParityError", "artifact_path", "check_parity", "reference_detections", "run_export"]
