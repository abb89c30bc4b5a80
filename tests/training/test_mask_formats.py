"""Readers of the mask formats users have: SIIM-ACR's train-rle.csv (the real file that
torchxrayvision's wheel ships), CheXlocalize's JSON files and CheXmask's CSVs.

No registry package ships a CheXlocalize or CheXmask file (checked with ``pip download
--no-deps`` of the candidates: none has one), so those readers are tested on files
written here in the documented format, with masks whose pixels the test knows.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

pycoco_mask = pytest.importorskip("pycocotools.mask")

from cxr.errors import InvalidFileError  # noqa: E402
from cxr.training.chexlocalize import read_chexlocalize_annotations, read_chexlocalize_segmentations  # noqa: E402
from cxr.training.chexmask import decode_chexmask_rle, encode_chexmask_rle, read_chexmask  # noqa: E402
from cxr.training.masks import decode_mask, encode_mask, rle_area  # noqa: E402
from cxr.training.siim import (  # noqa: E402
    coco_to_siim,
    decode_siim_rle,
    encode_siim_rle,
    read_siim_rle,
    siim_mask,
    siim_to_coco,
)

SIIM_FILE = "siim-pneumothorax-train-rle.csv.gz"


@pytest.fixture(scope="module")
def siim_path() -> Path:
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or spec.origin is None:
        pytest.skip("torchxrayvision is not installed (the [dev] extra): it ships SIIM-ACR's train-rle.csv")
    path = Path(spec.origin).parent / "data" / SIIM_FILE
    if not path.is_file():
        pytest.skip(f"torchxrayvision lacks data/{SIIM_FILE}")
    return path


@pytest.fixture(scope="module")
def siim_rows(siim_path: Path) -> list[tuple[str, str]]:
    with gzip.open(siim_path, "rt", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["ImageId", " EncodedPixels"]  # the published header, space included
    return [(a, b.strip()) for a, b in rows[1:]]


@pytest.fixture(scope="module")
def siim_images(siim_path: Path) -> dict[str, list[dict]]:
    return read_siim_rle(siim_path)


# --------------------------------------------------------------------------- SIIM, real file

def test_siim_real_file_counts(siim_images, siim_rows):
    by_image = siim_images
    assert len(siim_rows) == 12_954 and len(by_image) == 12_047
    assert sum(not v for v in by_image.values()) == 9_378  # -1: no pneumothorax
    assert sum(len(v) for v in by_image.values()) == 3_576 == sum(enc != "-1" for _, enc in siim_rows)
    assert sum(bool(v) for v in by_image.values()) == 2_669
    assert sum(len(v) > 1 for v in by_image.values()) == 624  # several rows, several instances
    assert Counter(len(v) for v in by_image.values())[10] == 1  # up to 10 instances on one film
    assert sum(rle_area(r) for v in by_image.values() for r in v) == 39_729_957  # positive pixels
    assert {tuple(r["size"]) for v in by_image.values() for r in v} == {(1024, 1024)}


def test_siim_every_row_decodes_encodes_back_and_matches_pycocotools(siim_rows):
    """Every instance row: SIIM RLE -> mask -> SIIM RLE gives the very string back;
    SIIM RLE -> COCO RLE -> SIIM RLE too; pycocotools decodes the COCO RLE to the same
    mask as the SIIM decoder (two decoders, one mask).  The -1 rows are empty images."""
    decoded = 0
    for image_id, encoded in siim_rows:
        if encoded == "-1":
            continue
        mask = decode_siim_rle(encoded)
        assert mask.shape == (1024, 1024) and mask.dtype == bool and mask.any()
        assert encode_siim_rle(mask) == encoded, image_id
        rle = siim_to_coco(encoded)
        assert coco_to_siim(rle) == encoded, image_id
        by_pycocotools = pycoco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()})
        assert np.array_equal(by_pycocotools.astype(bool), mask), image_id
        decoded += 1
    assert decoded == 3_576
    assert not decode_siim_rle("-1").any() and not decode_siim_rle(" -1 ").any()


def test_siim_masks_are_column_major(siim_images):
    """Pneumothoraces sit at the apices along the chest wall: read column-major, the masks'
    centres are high on the film and lateral; read row-major they would be transposed."""
    by_image = siim_images
    rles = [r for v in by_image.values() for r in v][:600]
    ys, xs = [], []
    for rle in rles:
        rows, cols = np.nonzero(decode_mask(rle))
        ys.append(rows.mean())
        xs.append(cols.mean())
    ys, xs = np.array(ys), np.array(xs)
    assert (ys < 512).mean() > 0.7  # upper half: apices
    assert np.median(np.abs(xs - 512)) > 120  # away from the midline: lateral
    union = siim_mask(by_image[next(k for k, v in by_image.items() if len(v) > 2)])
    assert union.sum() > 0


def test_siim_encode_decode_round_trip_on_edges_and_other_sizes():
    rng = np.random.default_rng(1)
    for h, w in ((1024, 1024), (7, 5), (1, 9)):
        for mask in (np.zeros((h, w), bool), np.ones((h, w), bool), rng.random((h, w)) < 0.3):
            encoded = encode_siim_rle(mask)
            assert np.array_equal(decode_siim_rle(encoded, h, w), mask)
            assert np.array_equal(decode_mask(siim_to_coco(encoded, h, w)), mask)
            assert coco_to_siim(encode_mask(mask)) == encoded
    ones = np.ones((3, 2), bool)
    assert encode_siim_rle(ones) == "0 6" and encode_siim_rle(np.zeros((3, 2), bool)) == "-1"
    corner = np.zeros((3, 2), bool)
    corner[1, 0] = corner[0, 1] = True  # column-major pixels 1 and 3: "1 1", then gap 1
    assert encode_siim_rle(corner) == "1 1 1 1"
    assert decode_siim_rle("0 1 0 2", 3, 2).ravel(order="F").tolist() == [True] * 3 + [False] * 3  # touching runs


@pytest.mark.parametrize("rows, message", [
    (["ImageId,Mask", "a,-1"], "not a SIIM-ACR train-rle.csv"),
    (["ImageId, EncodedPixels", "a,1 2 3"], "pairs"),
    (["ImageId, EncodedPixels", "a,1 x"], "integers"),
    (["ImageId, EncodedPixels", "a,5 -2"], "lengths >= 1"),
    (["ImageId, EncodedPixels", "a,1048570 10"], "past the 1024x1024 image"),
    (["ImageId, EncodedPixels", "a,-1", "a,3 4"], "both as -1"),
    (["ImageId, EncodedPixels", "a,3 4,9"], "line 2"),
])
def test_siim_malformed_files_name_the_problem(tmp_path: Path, rows, message):
    path = tmp_path / "train-rle.csv"
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(InvalidFileError, match=message):
        read_siim_rle(path)


# --------------------------------------------------------------------------- CheXlocalize

def _disc(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_chexlocalize_segmentations_in_the_released_format(tmp_path: Path):
    h, w = 60, 80
    effusion = _disc(h, w, 40, 20, 9) | _disc(h, w, 40, 62, 7)  # bilateral: one mask, two blobs
    empty = np.zeros((h, w), bool)
    data = {"patient64541_study1_view1_frontal": {
        "Pleural Effusion": encode_mask(effusion), "Cardiomegaly": encode_mask(empty)},
        "patient64542_study1_view1_frontal": {"Cardiomegaly": encode_mask(empty)}}
    path = tmp_path / "gt_segmentations_val.json"
    path.write_text(json.dumps(data))
    seg = read_chexlocalize_segmentations(path)
    assert set(seg) == set(data) and seg["patient64542_study1_view1_frontal"] == {}
    (name, rle), = seg["patient64541_study1_view1_frontal"].items()
    assert name == "Pleural Effusion" and np.array_equal(decode_mask(rle), effusion)
    assert len(read_chexlocalize_segmentations(path, keep_empty=True)["patient64541_study1_view1_frontal"]) == 2

    data["patient64542_study1_view1_frontal"]["Edema"] = {"size": [h, w], "counts": "PVWX6"}  # another image's
    path.write_text(json.dumps(data))
    with pytest.raises(InvalidFileError, match="patient64542_study1_view1_frontal Edema: RLE counts cover"):
        read_chexlocalize_segmentations(path)
    path.write_text(json.dumps({"x": {"Edema": {"size": [h, w], "counts": "zz~"}}}))
    with pytest.raises(InvalidFileError, match="hold 'z' at 0"):
        read_chexlocalize_segmentations(path)
    path.write_text("[1, 2]")
    with pytest.raises(InvalidFileError, match="maps image ids"):
        read_chexlocalize_segmentations(path)


def test_chexlocalize_annotations_give_one_instance_per_contour(tmp_path: Path):
    square = [[10, 10], [30, 10], [30, 20], [10, 20]]
    triangle = [[50, 5], [70, 5], [60, 25]]
    path = tmp_path / "gt_annotations_val.json"
    path.write_text(json.dumps({"patient1_study1_view1_frontal": {
        "img_size": [40, 80], "Atelectasis": [square, triangle], "Support Devices": [square]}}))
    (cxr_id, instances), = read_chexlocalize_annotations(path).items()
    assert [name for name, _ in instances] == ["Atelectasis", "Atelectasis", "Support Devices"]
    first = decode_mask(instances[0][1])
    assert first.shape == (40, 80) and first[10:21, 10:31].all() and first.sum() == 11 * 21  # outline included
    second = decode_mask(instances[1][1])
    assert not (first & second).any() and second[6, 60] and not second[30, 60]
    path.write_text(json.dumps({"p": {"img_size": [40, 80], "Edema": [[[1, 2], [3, 4]]]}}))
    with pytest.raises(InvalidFileError, match="p Edema contour 0: a contour is a list of at least 3"):
        read_chexlocalize_annotations(path)
    path.write_text(json.dumps({"p": {"Edema": [square]}}))
    with pytest.raises(InvalidFileError, match="img_size"):
        read_chexlocalize_annotations(path)


# --------------------------------------------------------------------------- CheXmask

CHEXMASK_HEADER = ["image_id", "Dice RCA (Mean)", "Dice RCA (Max)", "Landmarks", "Left Lung", "Right Lung",
                   "Heart", "Height", "Width"]


def _chexmask_csv(path: Path, rows: list[list]) -> Path:
    with gzip.open(path, "wt", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(CHEXMASK_HEADER)
        w.writerows(rows)
    return path


def test_chexmask_rle_is_absolute_one_based_and_row_major():
    mask = np.zeros((3, 4), bool)
    mask[0, 1:3] = True  # row-major pixels 2 and 3 (1-based)
    mask[2, 0] = True  # pixel 9
    assert encode_chexmask_rle(mask) == "2 2 9 1"
    assert np.array_equal(decode_chexmask_rle("2 2 9 1", 3, 4), mask)
    rng = np.random.default_rng(2)
    for m in (rng.random((50, 70)) < 0.4, np.ones((5, 5), bool), np.zeros((5, 5), bool)):
        assert np.array_equal(decode_chexmask_rle(encode_chexmask_rle(m), *m.shape), m)
    for bad, message in (("2 2 3 1", "overlap"), ("0 3", "start at pixel 1"), ("11 5", "end within"),
                         ("1 2 3", "pairs"), ("1 a", "integers")):
        with pytest.raises(InvalidFileError, match=message):
            decode_chexmask_rle(bad, 3, 4)


def test_chexmask_csv_in_the_released_format(tmp_path: Path):
    h, w = 64, 48
    left, right, heart = _disc(h, w, 30, 34, 9), _disc(h, w, 30, 12, 9), _disc(h, w, 44, 26, 6)
    landmarks = json.dumps([[1, 2], [3, 4]])
    rows = [["img_a", 0.91, 0.95, landmarks, encode_chexmask_rle(left), encode_chexmask_rle(right),
             encode_chexmask_rle(heart), h, w],
            ["img_b", 0.52, 0.60, landmarks, "", "", "", h, w]]
    path = _chexmask_csv(tmp_path / "VinDr-CXR.csv.gz", rows)
    found = read_chexmask(path)
    assert set(found) == {"img_a", "img_b"}
    a = found["img_a"]
    assert (a.height, a.width, a.dice_rca_mean) == (h, w, 0.91)
    for organ, truth in (("Left Lung", left), ("Right Lung", right), ("Heart", heart)):
        assert np.array_equal(a.mask(organ), truth)
    assert not found["img_b"].mask("Heart").any()
    assert set(read_chexmask(path, min_dice_rca=0.7)) == {"img_a"}
    assert set(read_chexmask(path, ids={"img_b"})) == {"img_b"}
    with pytest.raises(KeyError, match="unknown organ 'Liver'"):
        a.mask("Liver")


def test_chexmask_malformed_files_name_the_problem(tmp_path: Path):
    bad = tmp_path / "bad.csv"
    bad.write_text("image_id,Heart,Height\nx,1 2,10\n")
    with pytest.raises(InvalidFileError, match=r"lacks \['Left Lung', 'Right Lung', 'Width'\]"):
        read_chexmask(bad)
    two_ids = tmp_path / "two.csv"
    two_ids.write_text(",".join(["a", "b", *CHEXMASK_HEADER[1:]]) + "\n")
    with pytest.raises(InvalidFileError, match="pass id_column="):
        read_chexmask(two_ids)
    assert read_chexmask(two_ids, id_column="b") == {}
    path = _chexmask_csv(tmp_path / "c.csv.gz", [["x", 0.9, 0.9, "[]", "1 2 3", "", "", 8, 8]])
    with pytest.raises(InvalidFileError, match=r"line 2 \(x\).*Left Lung"):
        read_chexmask(path)
    path = _chexmask_csv(tmp_path / "d.csv.gz", [["x", 0.9, 0.9, "[]", "", "", "", "tall", 8]])
    with pytest.raises(InvalidFileError, match="Height must be a number"):
        read_chexmask(path)
