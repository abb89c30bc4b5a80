"""cxr.training.annotations against NIH's and VinDr's real annotation files, plus edge cases.

The real files come from torchxrayvision's package data (annotations only, no images).
torchxrayvision itself is never imported (it pulls in torch); only its folder is used.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from cxr.errors import UnknownLabelError
from cxr.labels import get_labelset
from cxr.training.annotations import (
    NIHDataset,
    Study,
    format_summary,
    fuse_readers,
    patient_split,
    read_nih_bbox_list,
    read_nih_data_entry,
    read_vindr,
    summarize,
    to_coco,
)

ENTRY_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
                "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
VINDR_HEADER = "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max"
NIH_BBOX_COUNTS = {"Atelectasis": 180, "Cardiomegaly": 146, "Effusion": 153, "Infiltration": 123,
                   "Mass": 85, "Nodule": 79, "Pneumonia": 120, "Pneumothorax": 98}


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def txv_data() -> Path:
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or spec.origin is None:
        pytest.skip("torchxrayvision is not installed (the [dev] extra): it ships the real NIH/VinDr CSVs")
    data = Path(spec.origin).parent / "data"
    needed = ("BBox_List_2017.csv.gz", "Data_Entry_2017_v2020.csv.gz", "vinbigdata-train.csv.gz")
    missing = [n for n in needed if not (data / n).is_file()]
    if missing:
        pytest.skip(f"torchxrayvision at {data} lacks {missing}")
    return data


@pytest.fixture(scope="module")
def entries(txv_data) -> list[dict]:
    return read_nih_data_entry(txv_data / "Data_Entry_2017_v2020.csv.gz")


@pytest.fixture(scope="module")
def bboxes(txv_data) -> dict:
    return read_nih_bbox_list(txv_data / "BBox_List_2017.csv.gz")


@pytest.fixture(scope="module")
def nih_with_images(txv_data, entries, bboxes, tmp_path_factory) -> tuple[Path, list[str]]:
    """Real CSVs (Data_Entry decompressed, BBox_List gzipped) + empty placeholder PNGs
    for the 880 boxed images and 120 "No Finding" images, in NIH's tarball layout."""
    root = tmp_path_factory.mktemp("nih_images")
    with gzip.open(txv_data / "Data_Entry_2017_v2020.csv.gz", "rb") as src, \
            open(root / "Data_Entry_2017_v2020.csv", "wb") as dst:
        shutil.copyfileobj(src, dst)
    shutil.copy(txv_data / "BBox_List_2017.csv.gz", root / "BBox_List_2017.csv.gz")
    no_finding = [e["image_index"] for e in entries if e["finding_labels"] == "No Finding"][:120]
    names = sorted(bboxes) + no_finding
    for k, name in enumerate(names):
        folder = root / f"images_{1 + k % 3:03d}" / "images"  # images_001/images/... as NIH unpacks
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).touch()
    return root, names


@pytest.fixture(scope="module")
def nih_full(nih_with_images) -> NIHDataset:
    """All 112,120 Data_Entry images (1,000 of them on disk), seeded split."""
    return NIHDataset.from_dir(nih_with_images[0])


@pytest.fixture(scope="module")
def nih_on_disk(nih_with_images) -> NIHDataset:
    """Only the 1,000 images on disk."""
    return NIHDataset.from_dir(nih_with_images[0], require_images=True, seed=0)


@pytest.fixture(scope="module")
def vindr(txv_data) -> list[Study]:
    return read_vindr(txv_data / "vinbigdata-train.csv.gz")


def assert_patient_disjoint(splits: dict[str, list[Study]]) -> None:
    seen: dict[str, str] = {}
    for name, studies in splits.items():
        for s in studies:
            assert seen.setdefault(s.patient_id, name) == name, f"patient {s.patient_id} in {seen[s.patient_id]} and {name}"


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------------- NIH readers, real files

def test_data_entry_real_counts(entries):
    # Checked against the file: the v2020 revision keeps the 2017 figures for these counts
    # (its ages and sizes differ from the 2017 original on some rows, not asserted here).
    assert len(entries) == 112_120
    assert len({e["patient_id"] for e in entries}) == 30_805
    assert sum(e["finding_labels"] == "No Finding" for e in entries) == 60_361
    assert Counter(e["view_position"] for e in entries) == {"PA": 67_310, "AP": 44_810}
    first = entries[0]
    assert first["image_index"] == "00000001_000.png" and first["patient_id"] == "1"
    # The bracketed header names were split at their commas and mapped to clean keys.
    assert (first["width"], first["height"]) == (2682, 2749)
    assert first["spacing_x"] == pytest.approx(0.143) and first["spacing_y"] == pytest.approx(0.143)
    assert set(first) == {"image_index", "finding_labels", "follow_up", "patient_id", "patient_age",
                          "patient_gender", "view_position", "width", "height", "spacing_x", "spacing_y"}


def test_bbox_list_real_counts_and_xyxy(bboxes):
    flat = [(label, box) for items in bboxes.values() for label, box in items]
    assert len(bboxes) == 880 and len(flat) == 984
    assert Counter(label for label, _ in flat) == NIH_BBOX_COUNTS  # "Infiltrate" renamed
    boxes = np.stack([b for _, b in flat])
    assert boxes.dtype == np.float32
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert boxes.min() >= 0 and boxes.max() <= 1024  # the released 1024 grid
    # First data row: 225.08,547.02 + (86.78, 79.19) -> xyxy
    (label, box), = bboxes["00013118_008.png"]
    assert label == "Atelectasis"
    np.testing.assert_allclose(box, [225.0847, 547.0192, 225.0847 + 86.7797, 547.0192 + 79.1864], rtol=1e-5)


# --------------------------------------------------------------------------- NIH readers, hand-made layouts

def test_data_entry_2017_original_trailing_comma_and_old_ages(tmp_path):
    path = write_lines(tmp_path / "Data_Entry_2017.csv", [
        ENTRY_HEADER + ",",  # the 2017 original ends every line with a comma
        "00000001_000.png,Cardiomegaly,0,00001,058Y,M,PA,2682,2749,0.143,0.143,",
        "",
    ])
    (row,) = read_nih_data_entry(path)
    assert row["patient_id"] == "1" and row["patient_age"] == 58 and row["follow_up"] == 0
    assert (row["width"], row["height"], row["spacing_y"]) == (2682, 2749, 0.143)


def test_data_entry_pandas_reexport_with_unnamed_column(tmp_path):
    path = write_lines(tmp_path / "Data_Entry_2017.csv", [
        ENTRY_HEADER + ",Unnamed: 11",
        "00000002_000.png,No Finding,0,2,81,M,PA,2500,2048,0.171,0.171,",
    ])
    (row,) = read_nih_data_entry(path)
    assert row["finding_labels"] == "No Finding" and row["spacing_x"] == 0.171


def test_data_entry_bad_header_is_a_clear_error(tmp_path):
    path = write_lines(tmp_path / "Data_Entry_2017.csv", ["Image,Labels,Patient", "a.png,No Finding,1"])
    with pytest.raises(ValueError, match=r"not an NIH Data_Entry_2017 file.*lacks.*image_index"):
        read_nih_data_entry(path)


def test_data_entry_short_row_names_the_line(tmp_path):
    path = write_lines(tmp_path / "Data_Entry_2017.csv", [ENTRY_HEADER, "00000001_000.png,Cardiomegaly,0"])
    with pytest.raises(ValueError, match="line 2"):
        read_nih_data_entry(path)


def test_bbox_list_bad_header_is_a_clear_error(tmp_path):
    path = write_lines(tmp_path / "BBox_List_2017.csv", ["image,label,x,y,w,h", "a.png,Mass,1,2,3,4"])
    with pytest.raises(ValueError, match=r"not an NIH BBox_List_2017 file"):
        read_nih_bbox_list(path)


def test_bbox_list_unknown_label_lists_valid_names(tmp_path):
    path = write_lines(tmp_path / "BBox_List_2017.csv", [BBOX_HEADER, "a.png,Tumour,1,2,3,4"])
    with pytest.raises(UnknownLabelError, match="valid names are"):
        read_nih_bbox_list(path)


# --------------------------------------------------------------------------- NIHDataset

def test_from_dir_full_real_files(nih_full):
    summary = nih_full.summary()
    assert (summary["images"], summary["patients"]) == (112_120, 30_805)
    assert (summary["boxes"], summary["images_with_boxes"]) == (984, 880)
    assert summary["no_finding_images"] == 60_361
    assert summary["boxes_per_class"] == NIH_BBOX_COUNTS
    # Findings without boxes are counted but not used for detection.
    assert summary["unboxed_finding_images"] == 112_120 - 880 - 60_361
    assert summary["detection_images"] == 880 + 60_361
    assert summary["images_on_disk"] == 1000 and nih_full.split_source == "seeded"
    splits = nih_full.splits
    assert_patient_disjoint(splits)
    assert sum(len(v) for v in splits.values()) == 112_120
    assert sum(v["patients"] for v in summary["splits"].values()) == 30_805
    # Seeded by patients: 70/10/20 of 30,805 patients.
    assert [summary["splits"][n]["patients"] for n in ("train", "val", "test")] == [21_564, 3_080, 6_161]
    for s in nih_full.detection_studies("test"):
        assert len(s.boxes) or not s.findings
    study = next(s for s in nih_full.studies if s.image_id == "00000001_000.png")
    # Released PNG grid; spacing rescaled from the 2682 x 2749 original at 0.143 mm.
    assert (study.width, study.height) == (1024, 1024)
    assert study.spacing_mm == pytest.approx((0.143 * 2749 / 1024, 0.143 * 2682 / 1024))
    assert "112,120" in format_summary(summary)


def test_from_dir_with_placeholder_images(nih_with_images, nih_on_disk):
    root, names = nih_with_images
    ds = nih_on_disk
    summary = ds.summary()
    assert summary["images"] == summary["images_on_disk"] == len(names) == 1000
    assert (summary["boxes"], summary["images_with_boxes"], summary["no_finding_images"]) == (984, 880, 120)
    assert summary["detection_images"] == 1000 and summary["boxes_per_class"] == NIH_BBOX_COUNTS
    assert all(s.path is not None and s.path.name == s.image_id for s in ds.studies)
    assert_patient_disjoint(ds.splits)
    assert sum(v["images"] for v in summary["splits"].values()) == 1000

    again = NIHDataset.from_dir(root, require_images=True, seed=0)
    other = NIHDataset.from_dir(root, require_images=True, seed=1)
    assert [s.split for s in again.studies] == [s.split for s in ds.studies]
    assert [s.split for s in other.studies] != [s.split for s in ds.studies]
    assert_patient_disjoint(other.splits)


def test_to_coco_loads_in_pycocotools(nih_on_disk):
    coco_mod = pytest.importorskip("pycocotools.coco")
    cocoeval = pytest.importorskip("pycocotools.cocoeval")
    ds = nih_on_disk
    labels = get_labelset("nih-bbox")
    gt_dict = to_coco(ds.detection_studies(), labels)
    gt = coco_mod.COCO()
    gt.dataset = gt_dict
    gt.createIndex()
    assert len(gt.getImgIds()) == 1000 and len(gt.getAnnIds()) == 984
    assert {c["id"]: c["name"] for c in gt.loadCats(gt.getCatIds())} == {
        labels.class_id(n): n for n in labels.names}
    assert len(gt.getAnnIds(catIds=[labels.class_id("Infiltration")])) == 123
    # The ground truth scored against itself is perfect: boxes, ids and areas agree.
    dets = gt.loadRes([{**a, "score": 1.0} for a in gt_dict["annotations"]])
    ev = cocoeval.COCOeval(gt, dets, "bbox")
    ev.params.areaRng, ev.params.areaRngLbl = [[0, 1e10]], ["all"]
    ev.evaluate(), ev.accumulate()
    precision = ev.eval["precision"][0, :, :, 0, -1]  # IoU 0.5, all recall, all classes
    assert np.allclose(precision[precision > -1], 1.0)


def test_official_lists_split_by_patient(tmp_path):
    rows = [ENTRY_HEADER] + [
        f"{p:08d}_{k:03d}.png,No Finding,{k},{p},40,F,PA,2048,2048,0.14,0.14" for p in range(1, 21) for k in range(3)
    ]
    write_lines(tmp_path / "Data_Entry_2017.csv", rows)
    write_lines(tmp_path / "BBox_List_2017.csv", [BBOX_HEADER, "00000001_000.png,Mass,10,20,30,40"])
    test_ids = [f"{p:08d}_{k:03d}.png" for p in range(1, 6) for k in range(3)]
    write_lines(tmp_path / "test_list.txt", test_ids)
    write_lines(tmp_path / "train_val_list.txt", [f"{p:08d}_{k:03d}.png" for p in range(6, 21) for k in range(3)])
    ds = NIHDataset.from_dir(tmp_path, val_fraction=0.2)
    assert ds.split_source == "official"
    assert {s.image_id for s in ds.split("test")} == set(test_ids)
    assert len({s.patient_id for s in ds.split("val")}) == 3  # 20% of 15 train/val patients
    assert_patient_disjoint(ds.splits)
    (boxed,) = [s for s in ds.studies if len(s.boxes)]
    np.testing.assert_allclose(boxed.boxes, [[10, 20, 40, 60]])
    # Every row 2048 x 2048: data in its own grid (as `cxr synth` writes), not NIH's 1024.
    assert (boxed.width, boxed.height, boxed.spacing_mm) == (2048, 2048, (0.14, 0.14))
    forced = NIHDataset.from_dir(tmp_path, released_size=1024).studies[0]
    assert (forced.width, forced.spacing_mm) == (1024, pytest.approx((0.28, 0.28)))

    write_lines(tmp_path / "test_list.txt", test_ids + ["00000006_000.png"])  # patient 6 now in both
    with pytest.raises(ValueError, match="patient 6"):
        NIHDataset.from_dir(tmp_path)
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        ds.split("dev")


def test_from_dir_prefers_v2020_and_reports_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        NIHDataset.from_dir(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"Data_Entry_2017\*\.csv"):
        NIHDataset.from_dir(tmp_path)
    write_lines(tmp_path / "Data_Entry_2017.csv", [ENTRY_HEADER, "00000001_000.png,Mass,0,1,40,F,PA,2048,2048,0.1,0.1"])
    with pytest.raises(FileNotFoundError, match=r"BBox_List_2017\.csv"):
        NIHDataset.from_dir(tmp_path)
    write_lines(tmp_path / "BBox_List_2017.csv", [BBOX_HEADER])
    write_lines(tmp_path / "Data_Entry_2017_v2020.csv",
                [ENTRY_HEADER, "00000009_000.png,No Finding,0,9,40,F,PA,2048,2048,0.1,0.1"])
    ds = NIHDataset.from_dir(tmp_path, val_fraction=0, test_fraction=0)
    assert [s.image_id for s in ds.studies] == ["00000009_000.png"]
    assert ds.files["data_entry"].endswith("_v2020.csv")
    with pytest.raises(FileNotFoundError, match="none of the 1 images"):
        NIHDataset.from_dir(tmp_path, require_images=True)


# --------------------------------------------------------------------------- patient_split

def _studies(n_patients: int, per_patient: int = 2) -> list[Study]:
    return [Study(image_id=f"{p}_{k}", path=None, patient_id=str(p)) for p in range(n_patients) for k in range(per_patient)]


def test_patient_split_is_disjoint_deterministic_and_order_free():
    studies = _studies(100)
    a = patient_split(studies, val_fraction=0.1, test_fraction=0.2, seed=3)
    b = patient_split(list(reversed(studies)), val_fraction=0.1, test_fraction=0.2, seed=3)
    assert_patient_disjoint(a)
    assert {k: {s.image_id for s in v} for k, v in a.items()} == {k: {s.image_id for s in v} for k, v in b.items()}
    assert [len({s.patient_id for s in a[n]}) for n in ("train", "val", "test")] == [70, 10, 20]
    assert all(s.split == name for name, v in a.items() for s in v)
    c = patient_split(studies, val_fraction=0.1, test_fraction=0.2, seed=4)
    assert {s.image_id for s in c["test"]} != {s.image_id for s in a["test"]}


def test_patient_split_small_dataset_keeps_every_requested_split():
    parts = patient_split(_studies(3), val_fraction=0.1, test_fraction=0.1, seed=0)
    assert [len(parts[n]) for n in ("train", "val", "test")] == [2, 2, 2]


def test_patient_split_rejects_bad_fractions():
    with pytest.raises(ValueError, match="val_fraction"):
        patient_split(_studies(5), val_fraction=1.5, test_fraction=0.1, seed=0)
    with pytest.raises(ValueError, match="leave patients for training"):
        patient_split(_studies(5), val_fraction=0.5, test_fraction=0.5, seed=0)


# --------------------------------------------------------------------------- VinDr

def test_vindr_real_file(txv_data, vindr):
    with gzip.open(txv_data / "vinbigdata-train.csv.gz", "rt", newline="") as fh:
        rows = list(csv.DictReader(fh))
    readers = defaultdict(set)
    for r in rows:
        readers[r["image_id"]].add(r["rad_id"])
    assert len(rows) == 67_914 and len(readers) == 15_000
    assert {len(v) for v in readers.values()} == {3}

    assert len(vindr) == 15_000 and len({s.image_id for s in vindr}) == 15_000
    summary = summarize(vindr)
    # All three readers said "No finding" on 10,606 images (checked against the file).
    assert summary["no_finding_images"] == 10_606 and summary["images_with_boxes"] == 4_394
    assert summary["unboxed_finding_images"] == 0 and summary["detection_images"] == 15_000
    assert set(summary["boxes_per_class"]) <= set(get_labelset("vindr").names)
    raw_boxes = sum(1 for r in rows if r["class_id"] != "14")
    assert 0 < summary["boxes"] < raw_boxes  # fusion merged readers' boxes (22,721 of 36,096)
    boxes = np.concatenate([s.boxes for s in vindr])
    assert boxes.dtype == np.float32
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert boxes.min() >= 0 and boxes[:, 2].max() <= 3131 and boxes[:, 3].max() <= 3384  # original pixels


def test_vindr_three_readers_fuse_to_one_box_in_original_pixels(tmp_path):
    path = write_lines(tmp_path / "train.csv", [
        VINDR_HEADER,
        "img,Cardiomegaly,3,R1,1000,1500,2000,1900",
        "img,Cardiomegaly,3,R2,1010,1490,2010,1910",
        "img,Cardiomegaly,3,R3,990,1510,1990,1890",
        "img,Nodule/Mass,8,R1,300,300,400,400",  # one reader only, another class: kept apart
    ])
    for sizes in (None, {"img": (2500, 2048)}):
        (study,) = read_vindr(path, image_sizes=sizes)
        assert study.box_labels == ("Cardiomegaly", "Nodule/Mass")
        np.testing.assert_allclose(study.boxes, [[1000, 1500, 2000, 1900], [300, 300, 400, 400]], atol=0.05)
        assert study.findings == ("Cardiomegaly", "Nodule/Mass")
        assert study.patient_id == "img"
    assert (study.width, study.height) == (2500, 2048)


def test_vindr_separate_boxes_of_one_class_stay_separate():
    readers = {"R1": [(8, [0.0, 0.0, 10.0, 10.0]), (8, [100.0, 100.0, 120.0, 120.0])],
               "R2": [(8, [1.0, 1.0, 11.0, 11.0])]}
    boxes, classes = fuse_readers(readers, iou_thr=0.4)
    np.testing.assert_allclose(boxes, [[0.5, 0.5, 10.5, 10.5], [100, 100, 120, 120]], atol=1e-3)
    assert classes.tolist() == [8, 8]


def test_vindr_no_finding_image_has_zero_boxes(tmp_path):
    path = write_lines(tmp_path / "train.csv", [VINDR_HEADER] + [f"nf,No finding,14,R{k},,,," for k in (1, 2, 3)])
    (study,) = read_vindr(path)
    assert study.boxes.shape == (0, 4) and study.box_labels == () and study.findings == ()
    assert study.detection_usable and summarize([study])["no_finding_images"] == 1


def test_vindr_bad_header_and_bad_coordinates(tmp_path):
    bad = write_lines(tmp_path / "bad.csv", ["image_id,class_name,x,y", "a,Cardiomegaly,1,2"])
    with pytest.raises(ValueError, match="not a VinDr-CXR train.csv.*x_min"):
        read_vindr(bad)
    empty = write_lines(tmp_path / "empty.csv", [VINDR_HEADER, "a,Cardiomegaly,3,R1,,,,"])
    with pytest.raises(ValueError, match="line 2.*needs 4 coordinates"):
        read_vindr(empty)


# --------------------------------------------------------------------------- Study, COCO, summary

def test_study_boxes_are_frozen_float32_copies():
    src = np.array([[1, 2, 3, 4]], dtype=np.float64)
    s = Study(image_id="a", path=None, patient_id="p", findings=("Mass",), boxes=src, box_labels=("Mass",))
    assert s.boxes.dtype == np.float32 and not s.boxes.flags.writeable and src.flags.writeable
    with pytest.raises(ValueError, match="1 boxes but 0 box labels"):
        Study(image_id="a", path=None, patient_id="p", boxes=src)
    assert Study(image_id="b", path=None, patient_id="p").boxes.shape == (0, 4)


def test_to_coco_boxes_are_xywh_with_labelset_ids():
    s = Study(image_id="x.png", path=None, patient_id="p", findings=("Mass",),
              boxes=np.array([[10, 20, 40, 60]], np.float32), box_labels=("Mass",), width=1024, height=1024)
    empty = Study(image_id="y.png", path=None, patient_id="q", width=1024, height=1024)
    coco = to_coco([s, empty], "nih-bbox")
    (ann,) = coco["annotations"]
    assert ann["bbox"] == [10, 20, 30, 40] and ann["area"] == 1200 and ann["iscrowd"] == 0
    assert ann["category_id"] == get_labelset("nih-bbox").class_id("Mass") == 5
    assert [im["id"] for im in coco["images"]] == [1, 2] and coco["images"][1]["file_name"] == "y.png"
    assert [c["id"] for c in coco["categories"]] == list(range(1, 9))
    pneumonia = Study(image_id="z.png", path=None, patient_id="r", findings=("Pneumonia",),
                      boxes=np.array([[1, 2, 3, 4]], np.float32), box_labels=("Pneumonia",))
    with pytest.raises(UnknownLabelError, match="'Pneumonia' for label set 'vindr'"):
        to_coco([pneumonia], "vindr")


def test_summarize_groups_by_study_split_and_formats():
    studies = patient_split(_studies(10), val_fraction=0.2, test_fraction=0.2, seed=0)
    flat = [s for v in studies.values() for s in v]
    summary = summarize(flat)
    assert summary["splits"] == {
        k: {"images": len(v), "patients": len({s.patient_id for s in v}), "boxes": 0, "detection_images": len(v)}
        for k, v in studies.items()
    }
    text = format_summary(summary)
    assert "patients" in text and "train" in text and "test" in text
