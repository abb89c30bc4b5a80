"""``cxr predict``: studies from files and folders through a running server.

Prints a table (or ``--json``), and writes annotated PNGs (``--png DIR``), saliency
overlays (``--saliency DIR``: one D-RISE map per finding, from ``cxr_explain``; for a DICOM
study also as Parametric Maps and Secondary Captures, stored with ``--stow``), DICOM
Structured Reports (``--sr DIR``) and presentation states (``--gsps DIR``) — the
two DICOM outputs only for DICOM inputs, which they must reference — and with
``--stow URL`` stores the SR (and the GSPS with ``--gsps``) in a PACS with DICOMweb
STOW-RS.  ``--seg DIR`` asks ``cxr_segment`` (a Mask R-CNN's ensemble) instead of the detector
and writes a DICOM Segmentation per DICOM study (stored with the SR by ``--stow``); the
annotated PNG then draws each finding's mask outline.  Folders are searched for files with an image suffix and for DICOM files by
their content (PACS exports often have no suffix).  Uses only the client extra (no torch).

Each study is read once into a :class:`~cxr.client.study.Study` that the request, the
annotated PNG and the SR/GSPS share: one read of the file, one parse of a DICOM, and
its pixels decoded once, only to draw the PNG.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cxr.client.errors import DetectorError
from cxr.client.results import StudyResult
from cxr.client.study import Study
from cxr.decode.header import SNIFF_BYTES, STUDY_SUFFIXES, sniff_format
from cxr.decode.types import ImageFormat
from cxr.errors import InvalidOptionError, MissingFileError

log = logging.getLogger("cxr.client")

COLOURS = ["#ff7f0e", "#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


def collect_inputs(paths: list[Path]) -> list[Path]:
    """Files given directly, plus images found recursively in given folders (sorted): PNG/JPEG/DICOM
    by suffix, and DICOM Part 10 files by content whatever their name."""
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files += sorted(f for f in p.rglob("*")
                            if f.is_file() and (f.suffix.lower() in STUDY_SUFFIXES or _is_dicom(f)))
        elif p.is_file():
            files.append(p)
        else:
            raise MissingFileError(f"no such file or folder: {p}")
    if not files:
        raise InvalidOptionError(f"no PNG, JPEG or DICOM files in {', '.join(map(str, paths))}")
    return files


def _is_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return sniff_format(f.read(SNIFF_BYTES)) is ImageFormat.DICOM
    except OSError:  # unreadable: not ours to judge here; given directly it fails with its own error
        return False


def label_font(image_height: int):
    """A TrueType font about 1/40 of the image high (26 px on a 1024 px film, 12 px at least).

    Pillow's own embedded font (``load_default(size=...)``, Pillow >= 10.1 with FreeType,
    which its wheels always have): no system font files, so CI draws the same text.
    """
    from PIL import ImageFont

    return ImageFont.load_default(size=max(12, round(image_height / 40)))


def draw_label(draw, xy: tuple[float, float], text: str, colour: str, font, *, image_width: int,
               placed: list | None = None) -> None:
    """``text`` on a box filled with ``colour``, in black or white, whichever contrasts more:
    it reads on bright bone and dark lung alike.  ``xy`` is the detection box's top-left
    corner; the label sits just above it (below the edge when there is no room), and
    above the labels already in ``placed`` that it would cover (which it joins)."""
    from PIL import ImageColor

    from cxr.boxes import caption_slot

    pad = max(2, round(font.size / 6))
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    w, h = right - left + 2 * pad, bottom - top + 2 * pad
    x = min(max(0.0, xy[0]), max(0.0, image_width - w))
    y = xy[1] - h if xy[1] - h >= 0 else xy[1]
    y = caption_slot(x, y, w, h, [] if placed is None else placed, floor=0.0)
    r, g, b = ImageColor.getrgb(colour)[:3]
    ink = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 140 else "white"
    draw.rectangle((x, y, x + w, y + h), fill=colour)
    draw.text((x + pad - left, y + pad - top), text, fill=ink, font=font)


def annotated_png(study: Study | Path, result: StudyResult, out: Path, *, min_score: float = 0.0) -> Path:
    """The study with its boxes, labels and scores drawn, as an 8-bit PNG (lines and text
    scale with the film: readable at normal zoom on 256 px and 3000 px films alike).

    study: the Study that was sent (its pixels are decoded once, here), or a file path.
    """
    from PIL import Image, ImageDraw

    pixels = (study if isinstance(study, Study) else Study.read(study)).decoded().pixels
    img = Image.fromarray((pixels * 255).round().astype("uint8")).convert("RGB")
    draw = ImageDraw.Draw(img)
    width = max(2, round(max(img.size) / 300))
    font = label_font(img.height)
    shown = [d for d in result.detections if d.score >= min_score]
    if any(d.mask is not None for d in shown):  # a Mask R-CNN's result: each finding's outline under its box
        img = _draw_outlines(img, shown, max(1, width // 2))
        draw = ImageDraw.Draw(img)
    for i, d in enumerate(shown):
        draw.rectangle(d.box_xyxy_px, outline=COLOURS[i % len(COLOURS)], width=width)
    placed: list = []
    for i, d in enumerate(shown):  # labels last: no box line crosses a label
        draw_label(draw, (d.box_xyxy_px[0], d.box_xyxy_px[1]), f"{d.label} {d.score:.2f}", COLOURS[i % len(COLOURS)], font,
                   image_width=img.width, placed=placed)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)
    return out


def mask_outline(crop: np.ndarray, width: int = 1) -> np.ndarray:
    """The pixels of a bool mask within ``width`` px of its edge (4-neighbour erosion, the crop's
    border counting as outside): what the annotated PNG draws as the mask's contour."""
    inner = np.pad(crop.astype(bool), 1)
    for _ in range(width):
        inner[1:-1, 1:-1] = (inner[1:-1, 1:-1] & inner[:-2, 1:-1] & inner[2:, 1:-1] & inner[1:-1, :-2]
                             & inner[1:-1, 2:])
    return crop.astype(bool) & ~inner[1:-1, 1:-1]


def _draw_outlines(img, shown: list, width: int):
    """``img`` (RGB) with each detection's mask outline in its colour (as its box)."""
    from PIL import Image, ImageColor

    pixels = np.asarray(img).copy()
    for i, d in enumerate(shown):
        if d.mask is None or d.mask.area == 0:
            continue
        x0, y0, x1, y1 = d.mask.rect
        region = pixels[y0:y1, x0:x1]
        region[mask_outline(d.mask.crop, width)] = ImageColor.getrgb(COLOURS[i % len(COLOURS)])[:3]
    return Image.fromarray(pixels)


@dataclass
class Outcome:
    path: Path
    result: StudyResult | None = None
    error: DetectorError | None = None
    written: tuple[Path, ...] = ()
    stored: tuple[str, ...] = ()  # SOPInstanceUIDs stored with STOW-RS
    stow_error: str | None = None


def run_predict(paths: list[Path], client, *, png: Path | None = None, sr: Path | None = None, gsps: Path | None = None,
                min_score: float = 0.0, progress: bool = True, stow=None, saliency: Path | None = None,
                explain: dict | None = None, seg: Path | None = None) -> list[Outcome]:
    """Every study through ``client``; ``stow``: a :class:`~cxr.client.destinations.StowDestination` for the results.

    saliency: a folder for one saliency overlay PNG per study; the studies then go through
    ``client.explain(study, **explain)`` (the same detections, each with its map) instead of
    ``client.predict``, and the SR/GSPS are built from that result.  A DICOM study also gets a
    Parametric Map and a Secondary Capture per finding shown there (``NAME.pmK.dcm``,
    ``NAME.scK.dcm``), which ``stow`` stores with the SR/GSPS.

    seg: a folder for one DICOM Segmentation per DICOM study with a finding at or above
    ``min_score`` (``NAME.seg.dcm``); ``client`` must then ask ``cxr_segment`` (its detections
    carry masks).  ``stow`` stores it with the SR.
    """
    files = collect_inputs(paths)
    dicom_outputs = sr is not None or gsps is not None or stow is not None or seg is not None
    outcomes = []
    for path in tqdm(files, desc="predict", unit="study", disable=not progress or len(files) < 2, file=sys.stderr):
        try:
            # Read once; a DICOM's Dataset is kept (one parse) when a PNG or the SR/GSPS need it.
            study = Study.read(path, keep_dataset=png is not None or saliency is not None or dicom_outputs)
            result = client.explain(study, **(explain or {})) if saliency is not None else client.predict(study)
        except DetectorError as exc:
            log.warning("study %s failed: %s %s", path.name, exc.status, exc.message)
            outcomes.append(Outcome(path, error=exc))
            continue
        written = []
        # study.dcm and study.png side by side must not overwrite each other's picture
        name = path.stem if path.suffix.lower() == ".png" else f"{path.stem}_{path.suffix.lstrip('.').lower()}"
        if png is not None:
            written.append(annotated_png(study, result, png / f"{name}.png", min_score=min_score))
        carriers: list = []
        if saliency is not None:
            carriers = _write_saliency(study, result, saliency, name, written, min_score=min_score)
        stored, stow_error = (), None
        if (dicom_outputs or carriers) and study.is_dicom:
            outputs = _dicom_outputs(study, result, gsps=gsps is not None, min_score=min_score) if dicom_outputs else {}
            if seg is not None and any(d.score >= min_score for d in result.detections):
                from cxr.client.dicom_out import segmentation

                outputs["seg"] = segmentation(study.dataset, result, min_score=min_score)
            for kind, folder in (("sr", sr), ("gsps", gsps), ("seg", seg)):
                if folder is not None and kind in outputs:
                    folder.mkdir(parents=True, exist_ok=True)
                    outputs[kind].save_as(folder / f"{path.stem}.{kind}.dcm", enforce_file_format=True)
                    written.append(folder / f"{path.stem}.{kind}.dcm")
            if stow is not None:
                stored, stow_error = _store(stow, list(outputs.values()) + carriers, path)
        outcomes.append(Outcome(path, result=result, written=tuple(written), stored=stored, stow_error=stow_error))
    return outcomes


def _dicom_outputs(study: Study, result: StudyResult, *, gsps: bool, min_score: float) -> dict:
    """The SR (and GSPS) of ``result``, referencing the study's Dataset as it was parsed for the request."""
    from cxr.client.dicom_out import presentation_state, structured_report

    outputs = {"sr": structured_report(study.dataset, result)}
    if gsps:
        outputs["gsps"] = presentation_state(study.dataset, result, min_score=min_score)
    return outputs


def _write_saliency(study: Study, result: StudyResult, folder: Path, name: str, written: list[Path], *,
                    min_score: float) -> list:
    """The overlay PNG and, for a DICOM study, one Parametric Map and one Secondary Capture per finding
    shown (nine at most) beside it, from the Dataset and pixels the request and the PNG used; appends
    what it wrote to ``written`` and returns the DICOM objects (``--stow`` stores them with the SR)."""
    from cxr.client.saliency_png import saliency_overlay

    written.append(saliency_overlay(study, result, folder / f"{name}.png", min_score=min_score))
    if not study.is_dicom:
        return []
    from cxr.client.dicom_out import MAX_MAPS, parametric_maps, secondary_captures

    kinds = {"pm": parametric_maps(study.dataset, result, min_score=min_score, max_maps=MAX_MAPS),
             "sc": secondary_captures(study.dataset, result, film=study.decoded().pixels, min_score=min_score,
                                      max_images=MAX_MAPS)}
    for kind, objects in kinds.items():
        for obj in objects:
            written.append(folder / f"{Path(study.path or name).stem}.{kind}{obj.InstanceNumber}.dcm")
            obj.save_as(written[-1], enforce_file_format=True)
    return kinds["pm"] + kinds["sc"]


def _store(stow, outputs: list, path: Path) -> tuple[tuple[str, ...], str | None]:
    from cxr.client.destinations import DeliveryError

    try:
        stow.deliver(outputs)
    except DeliveryError as exc:
        log.warning("study %s: results not stored: %s", path.name, exc)
        return (), str(exc)
    return tuple(str(ds.SOPInstanceUID) for ds in outputs), None


def format_table(outcomes: list[Outcome], *, min_score: float = 0.0) -> str:
    rows = [f"{'study':<28} {'finding':<14} {'score':>6}  {'box x1,y1,x2,y2 (px)':<26} {'ms':>6}"]
    for o in outcomes:
        name = o.path.name[:28]
        if o.error is not None:
            rows.append(f"{name:<28} FAILED  {o.error.status}: {o.error.message}")
            continue
        dets = [d for d in o.result.detections if d.score >= min_score]
        if not dets:
            rows.append(f"{name:<28} {'no finding':<14} {'':>6}  {'':<26} {o.result.latency_ms:6.0f}")
        for i, d in enumerate(dets):
            box = ",".join(f"{v:.0f}" for v in d.box_xyxy_px)
            ms = f"{o.result.latency_ms:6.0f}" if i == 0 else ""
            rows.append(f"{name if i == 0 else '':<28} {d.label:<14} {d.score:6.3f}  {box:<26} {ms:>6}")
    return "\n".join(rows)


def outcomes_json(outcomes: list[Outcome]) -> str:
    return json.dumps([
        {"path": str(o.path), **({"result": o.result.to_dict()} if o.result else {}),
         **({"error": {"status": o.error.status, "message": o.error.message}} if o.error else {}),
         "written": [str(p) for p in o.written],
         **({"stored": list(o.stored)} if o.stored else {}), **({"stow_error": o.stow_error} if o.stow_error else {})}
        for o in outcomes
    ], indent=2)
