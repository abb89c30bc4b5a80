"""``cxr synth`` writes each finding's drawn pixels as COCO RLE instance masks (masks.json).

What is checked: the PNGs, CSVs and DICOM files are what they were before masks existed;
a mask is the region where the film differs from the same film without the finding (not
the box); masks.json is COCO that pycocotools reads, one instance per NIH box with the
CSV's very bbox; the DICOM copies share the PNGs' pixel grid; the NIH reader hands the
masks to training as ``Study.masks`` and ``cxr data info`` counts them.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

pytest.importorskip("pycocotools")
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

from cxr.labels import NIH_BBOX_CLASSES, get_labelset  # noqa: E402
from cxr.training.annotations import NIHDataset, format_summary, to_coco  # noqa: E402
from cxr.training.masks import decode_mask  # noqa: E402
from cxr.training.synth import SynthConfig, generate  # noqa: E402
from cxr.training.synth_findings import sample_findings  # noqa: E402
from cxr.training.synth_masks import MASK_THRESHOLD, box_pixels  # noqa: E402
from cxr.training.synth_render import render_study, render_study_with_masks  # noqa: E402

# Recorded at the commit before masks existed (48cd8e3) with numpy 1.26.4, pillow 13.0.0:
# decoded pixels of every PNG, every CSV/list byte, every DICOM's PixelData and UIDs.
BEFORE_MASKS = {
    "a": (SynthConfig(images=6, seed=11, size=128, dicom=True, preview=True),
          "90596ef3f20a349fd5f1af2858ebb869691a9dc87371e7067e2eaa41364f2914"),
    "b": (SynthConfig(images=5, seed=2, size=600, bit_depth=16, no_finding_fraction=0.0, dicom=True),
          "c07fdce45f9fd2ec6e04b675926b175984facceb36cc4beb8358b18c9ed225b0"),
}
RECORDED_WITH = {"numpy": "1.26.4", "PIL": "13.0.0"}


def content_digest(root: Path) -> str:
    """One digest of a synth folder's pictures and tables (not synth.json, masks.json or
    the preview, whose text rendering depends on the font library)."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if not p.is_file() or rel in ("synth.json", "masks.json", "preview.png"):
            continue
        if p.suffix == ".png":
            with Image.open(p) as im:
                data = f"{im.mode}{im.size}".encode() + np.asarray(im).tobytes()
        elif p.suffix == ".dcm":
            ds = pydicom.dcmread(p)
            data = f"{ds.Rows}x{ds.Columns}{ds.PhotometricInterpretation}{ds.Modality}{ds.SOPInstanceUID}".encode()
            data += ds.PixelData
        else:
            data = p.read_bytes()
        h.update(rel.encode() + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth_masks") / "nih"
    generate(out, SynthConfig(images=14, seed=4, size=192, no_finding_fraction=0.2, dicom=True), progress=False)
    return out


@pytest.mark.parametrize("name", sorted(BEFORE_MASKS))
def test_images_and_tables_are_those_written_before_masks_existed(tmp_path: Path, name: str):
    import numpy
    import PIL

    if (numpy.__version__, PIL.__version__) != (RECORDED_WITH["numpy"], RECORDED_WITH["PIL"]):
        pytest.skip(f"digests recorded with {RECORDED_WITH}; this is numpy {numpy.__version__}, pillow "
                    f"{PIL.__version__} (re-record them at commit 48cd8e3 with tests' content_digest)")
    cfg, expected = BEFORE_MASKS[name]
    out = generate(tmp_path / name, cfg, progress=False)
    assert (out / "masks.json").is_file()
    assert content_digest(out) == expected


def test_masks_change_no_byte_of_the_other_files(tmp_path: Path):
    with_masks = generate(tmp_path / "a", SynthConfig(images=5, seed=7, size=128, dicom=True), progress=False)
    without = generate(tmp_path / "b", SynthConfig(images=5, seed=7, size=128, dicom=True, masks=False), progress=False)
    assert not (without / "masks.json").exists()
    files = sorted(p.relative_to(without) for p in without.rglob("*") if p.is_file() and p.name != "synth.json")
    assert files == sorted(p.relative_to(with_masks) for p in with_masks.rglob("*")
                           if p.is_file() and p.name not in ("synth.json", "masks.json"))
    for f in files:
        assert (with_masks / f).read_bytes() == (without / f).read_bytes(), f
    generate(with_masks, SynthConfig(images=2, seed=7, size=128, masks=False), progress=False)
    assert not (with_masks / "masks.json").exists()  # a rerun leaves no stale masks behind


def _one_box_per_class(size: int) -> dict[str, np.ndarray]:
    boxes: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(0)
    while len(boxes) < len(NIH_BBOX_CLASSES):
        for name, box in sample_findings(rng, size=size):
            boxes.setdefault(name, box)
    return boxes


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    out = mask.copy()
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            out |= np.roll(mask, (dy, dx), axis=(0, 1))
    return out


@pytest.mark.parametrize("name", NIH_BBOX_CLASSES)
def test_a_mask_is_where_the_film_differs_from_the_film_without_the_finding(name: str):
    size = 256
    box = _one_box_per_class(size)[name]
    film = lambda findings: render_study(np.random.default_rng(3), findings, size=size, anatomy_seed=9)  # noqa: E731
    image, (mask,) = render_study_with_masks(np.random.default_rng(3), [(name, box)], size=size, anatomy_seed=9)
    assert np.array_equal(image, film([(name, box)]))  # the masks draw no random numbers
    normal = film([])
    change = image - normal  # same grain in both: what remains is the finding
    differs = np.abs(change) >= MASK_THRESHOLD
    inside = box_pixels(box, size)
    assert mask.dtype == bool and mask.shape == (size, size)
    assert mask.any() and not (mask & ~inside).any()  # never outside its NIH box
    assert mask.sum() < 0.9 * inside.sum()  # a region, not the box
    if name == "Cardiomegaly":  # the whole silhouette: the heart that was there, and its growth
        grew = (change > MASK_THRESHOLD) & inside
        assert (grew & _dilate(mask, 2)).sum() >= 0.99 * grew.sum()  # the shadow's soft edge: 1-2 px
        x1, y1, x2, y2 = box
        assert mask.sum() == pytest.approx(np.pi / 4 * (x2 - x1) * (y2 - y1), rel=0.1)  # an ellipse
    elif name == "Pneumothorax":  # the air rim: darker than the normal film, the lung excluded
        assert (differs & mask).sum() >= 0.95 * mask.sum()
        assert np.median(change[mask]) < -MASK_THRESHOLD
    else:
        iou = (differs & mask).sum() / (differs | mask).sum()
        assert iou >= 0.9, f"{name}: IoU {iou:.3f} between the mask and the pixels that differ"
        assert np.median(change[mask]) > MASK_THRESHOLD  # an opacity: brighter


def _csv_boxes(root: Path) -> list[tuple[str, str, list[float]]]:
    with open(root / "BBox_List_2017.csv", newline="") as fh:
        rows = list(csv.reader(fh))[1:]
    return [(r[0], "Infiltration" if r[1] == "Infiltrate" else r[1], [float(v) for v in r[2:6]]) for r in rows]


def test_masks_json_is_coco_with_one_instance_per_nih_box(synth: Path):
    coco = COCO(str(synth / "masks.json"))
    labels = get_labelset("nih-bbox")
    names = sorted(p.name for p in (synth / "images").iterdir())
    assert sorted(im["file_name"] for im in coco.dataset["images"]) == names  # no-finding images too
    by_name = {im["file_name"]: im for im in coco.dataset["images"]}
    found = []
    for ann in coco.dataset["annotations"]:
        im = by_name[coco.imgs[ann["image_id"]]["file_name"]]
        found.append((im["file_name"], labels.names[ann["category_id"] - 1], ann["bbox"]))
        mask = coco.annToMask(ann).astype(bool)  # pycocotools decodes our RLE
        assert mask.shape == (im["height"], im["width"]) == (192, 192)
        assert ann["area"] == mask.sum() > 0 and ann["iscrowd"] == 0
        x, y, w, h = ann["bbox"]
        assert not (mask & ~box_pixels([x, y, x + w, y + h], 192)).any()
    assert sorted(found) == sorted(_csv_boxes(synth))  # the CSV's very numbers, per image and class


def test_masks_score_perfectly_against_themselves_in_cocoeval(synth: Path):
    ds = NIHDataset.from_dir(synth)
    gt_dict = to_coco(ds.detection_studies(), "nih-bbox")
    assert sum("segmentation" in a for a in gt_dict["annotations"]) == len(gt_dict["annotations"]) > 0
    gt = COCO()
    gt.dataset = gt_dict
    gt.createIndex()
    dets = gt.loadRes([{**a, "score": 1.0} for a in gt_dict["annotations"]])
    ev = COCOeval(gt, dets, "segm")
    ev.evaluate(), ev.accumulate(), ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)  # segm AP@[.5:.95]


def test_dicom_copies_share_the_masks_pixel_grid(synth: Path):
    coco = json.loads((synth / "masks.json").read_text())
    images = {im["id"]: im for im in coco["images"]}
    checked = 0
    for ann in coco["annotations"]:
        im = images[ann["image_id"]]
        ds = pydicom.dcmread(synth / im["dicom_file_name"])
        assert (ds.Rows, ds.Columns) == (im["height"], im["width"]) == tuple(ann["segmentation"]["size"])
        px = ds.pixel_array.astype(np.float64)
        if ds.PhotometricInterpretation == "MONOCHROME1":
            px = 4095 - px
        with Image.open(synth / "images" / im["file_name"]) as png:
            grey = np.asarray(png, dtype=np.float64) / 255
        assert np.abs(px / 4095 - grey).max() < 0.01  # same pixels in the same places: no flip, no crop
        mask = decode_mask(ann["segmentation"])
        assert abs((px / 4095)[mask].mean() - grey[mask].mean()) < 0.002
        checked += 1
    assert checked == len(coco["annotations"]) > 0


def test_the_nih_reader_gives_studies_their_masks_and_data_info_counts_them(synth: Path, capsys):
    from cxr.cli import main

    ds = NIHDataset.from_dir(synth)
    assert ds.files["masks"] == str(synth / "masks.json")
    boxed = [s for s in ds.studies if len(s.boxes)]
    assert boxed and all(s.masks is not None and s.masks.count == len(s.boxes) for s in boxed)
    assert all(s.masks is None for s in ds.studies if not len(s.boxes))
    coco = COCO(str(synth / "masks.json"))
    ids = {im["file_name"]: im["id"] for im in coco.dataset["images"]}
    for s in boxed:
        stack = s.masks.stack()
        assert stack.shape == (len(s.boxes), 192, 192) and stack.dtype == bool
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[ids[s.image_id]]))
        for k, box in enumerate(s.boxes):  # each mask belongs to its own box
            assert stack[k].any() and not (stack[k] & ~box_pixels(box, 192)).any()
        assert sorted(int(m.sum()) for m in stack) == sorted(int(a["area"]) for a in anns)
    summary = ds.summary()
    assert summary["masks"] == summary["boxes"] == sum(len(s.boxes) for s in boxed)
    assert summary["images_with_masks"] == len(boxed)
    assert "boxes with instance masks" in format_summary(summary)
    capsys.readouterr()  # pycocotools prints as it indexes
    assert main(["data", "info", str(synth), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["masks"] == summary["masks"]
    assert NIHDataset.from_dir(synth, masks=None).summary()["masks"] == 0
