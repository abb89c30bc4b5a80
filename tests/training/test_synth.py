"""The synthetic NIH-layout generator: layout, determinism, splits, bit depths, DICOM."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from cxr.labels import NIH_BBOX_CLASSES, NIH_FINDINGS
from cxr.training.synth import SynthConfig, generate, render_study

DATA_ENTRY_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
    "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
BBOX_LABELS = {"Infiltrate" if c == "Infiltration" else c for c in NIH_BBOX_CLASSES}


def _rows(path: Path) -> tuple[str, list[list[str]]]:
    text = path.read_text()
    header, _, body = text.partition("\n")
    return header, list(csv.reader(body.splitlines()))


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "nih"
    generate(out, SynthConfig(images=12, seed=3, size=256, preview=True, dicom=True), progress=False)
    return out


def test_layout_and_exact_headers(small: Path):
    for name in ("Data_Entry_2017.csv", "BBox_List_2017.csv", "train_val_list.txt", "test_list.txt", "preview.png"):
        assert (small / name).is_file(), name
    header, rows = _rows(small / "Data_Entry_2017.csv")
    assert header == DATA_ENTRY_HEADER
    assert len(rows) == 12 and all(len(r) == 11 for r in rows)
    images = sorted(p.name for p in (small / "images").iterdir())
    assert images == sorted(r[0] for r in rows)
    for name, labels, followup, patient, age, sex, view, w, h, sx, sy in rows:
        m = re.fullmatch(r"(\d{8})_(\d{3})\.png", name)
        assert m and int(m.group(1)) == int(patient) and int(m.group(2)) == int(followup)
        assert labels == "No Finding" or set(labels.split("|")) <= set(NIH_FINDINGS)
        assert view in ("PA", "AP") and sex in ("M", "F") and 0 < int(age) < 120
        assert (int(w), int(h), float(sx), float(sy)) == (256, 256, 0.143, 0.143)
    patients = [int(r[3]) for r in rows]
    assert min(patients) == 1
    assert max(np.bincount(patients)) > 1  # follow-ups exist
    with Image.open(small / "images" / images[0]) as im:
        assert im.mode == "L" and im.size == (256, 256)


def test_bbox_list_matches_data_entry(small: Path):
    header, rows = _rows(small / "BBox_List_2017.csv")
    assert header == BBOX_HEADER
    assert rows and all(len(r) == 6 for r in rows)
    labels = {r[0]: r[1] for r in _rows(small / "Data_Entry_2017.csv")[1]}
    for name, label, *xywh in rows:
        assert label in BBOX_LABELS  # "Infiltrate", never "Infiltration", as in NIH's file
        image_label = "Infiltration" if label == "Infiltrate" else label
        assert image_label in labels[name].split("|")
        x, y, w, h = map(float, xywh)
        assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= 256 and y + h <= 256
    boxed = {r[0] for r in rows}
    assert boxed == {n for n, lab in labels.items() if lab != "No Finding"}


def test_boxes_inside_image_many_studies(tmp_path: Path):
    generate(tmp_path / "o", SynthConfig(images=40, seed=5, size=128, no_finding_fraction=0.0), progress=False)
    _, rows = _rows(tmp_path / "o" / "BBox_List_2017.csv")
    assert len(rows) >= 40
    xywh = np.array([[float(v) for v in r[2:]] for r in rows])
    assert (xywh[:, :2] >= 0).all() and (xywh[:, 2:] >= 1).all()
    assert (xywh[:, 0] + xywh[:, 2] <= 128).all() and (xywh[:, 1] + xywh[:, 3] <= 128).all()


def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path: Path):
    cfg = SynthConfig(images=6, seed=11, size=128)
    a, b = generate(tmp_path / "a", cfg, progress=False), generate(tmp_path / "b", cfg, progress=False)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    c = generate(tmp_path / "c", SynthConfig(images=6, seed=12, size=128), progress=False)
    assert (a / "images" / "00000001_000.png").read_bytes() != (c / "images" / "00000001_000.png").read_bytes()


def test_split_is_by_patient_and_covers_every_image(small: Path):
    train = (small / "train_val_list.txt").read_text().split()
    test = (small / "test_list.txt").read_text().split()
    assert train and test
    assert sorted(train + test) == sorted(p.name for p in (small / "images").iterdir())
    assert not {n[:8] for n in train} & {n[:8] for n in test}


def test_16_bit_png_uses_the_wide_range(tmp_path: Path):
    out = generate(tmp_path / "o", SynthConfig(images=2, size=128, bit_depth=16), progress=False)
    with Image.open(out / "images" / "00000001_000.png") as im:
        assert im.mode in ("I;16", "I")
        px = np.asarray(im)
    assert px.max() - px.min() > 40000  # real 16-bit data, not 8-bit values in a 16-bit file
    assert len(np.unique(px)) > 1000


def test_dicom_monochrome1_and_2_read_back_as_the_png(small: Path):
    photometric, modality = set(), set()
    for dcm in sorted((small / "dicom").glob("*.dcm")):
        ds = pydicom.dcmread(dcm)
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert (ds.BitsAllocated, ds.BitsStored, ds.PixelRepresentation) == (16, 12, 0)
        assert ds.BodyPartExamined == "CHEST" and ds.ViewPosition in ("PA", "AP")
        assert str(ds.PatientName).startswith("SYNTH^PATIENT") and ds.PatientID and ds.PatientBirthDate
        assert "WindowCenter" in ds and "WindowWidth" in ds
        spacing = ds.ImagerPixelSpacing if ds.Modality == "DX" else ds.PixelSpacing
        assert [float(v) for v in spacing] == [0.143, 0.143]
        photometric.add(ds.PhotometricInterpretation)
        modality.add(ds.Modality)
        px = ds.pixel_array.astype(np.float64)
        assert px.max() <= 4095
        if ds.PhotometricInterpretation == "MONOCHROME1":
            px = 4095 - px
        with Image.open(small / "images" / (dcm.stem + ".png")) as im:
            png = np.asarray(im, dtype=np.float64)
        assert np.corrcoef(px.ravel(), png.ravel())[0, 1] > 0.99
        assert np.abs(px / 4095 - png / 255).max() < 0.01
    assert photometric == {"MONOCHROME1", "MONOCHROME2"}
    assert modality == {"CR", "DX"}
    uids = [pydicom.dcmread(p).StudyInstanceUID for p in (small / "dicom").glob("*.dcm")]
    assert len(set(uids)) == len(uids) == 12


def test_full_size_1024_image(tmp_path: Path):
    out = generate(tmp_path / "o", SynthConfig(images=1, seed=1), progress=False)
    with Image.open(out / "images" / "00000001_000.png") as im:
        assert im.size == (1024, 1024) and im.mode == "L"
        px = np.asarray(im)
    assert px.std() > 30  # a picture, not a flat field


def test_render_study_empty_study_and_finding_stays_in_its_box():
    size = 256
    box = np.array([40.0, 90.0, 100.0, 150.0], dtype=np.float32)
    normal = render_study(np.random.default_rng(7), [], size=size)
    assert normal.shape == (size, size) and normal.dtype == np.float32
    assert 0 <= normal.min() and normal.max() <= 1
    sick = render_study(np.random.default_rng(7), [("Infiltrate", box)], size=size)  # NIH spelling accepted
    diff = np.abs(sick - normal)
    outside = np.ones_like(diff, dtype=bool)
    outside[90 - 4 : 150 + 4, 40 - 4 : 100 + 4] = False  # + a few pixels of film blur
    assert diff[~outside].mean() > 0.02  # visible inside the box
    assert diff[outside].max() < 1e-5  # nothing outside it


def test_render_study_rejects_bad_boxes_and_names():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="xyxy box inside"):
        render_study(rng, [("Nodule", np.array([50, 50, 40, 60]))], size=128)
    with pytest.raises(KeyError, match="unknown finding"):
        render_study(rng, [("Broken Rib", np.array([10, 10, 40, 60]))], size=128)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"images": 0}, "images must be an integer >= 1, got 0"),
        ({"bit_depth": 12}, "bit_depth must be 8 or 16, got 12"),
        ({"size": 32}, "size must be"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"no_finding_fraction": -0.1}, "no_finding_fraction"),
        ({"max_images_per_patient": 0}, "max_images_per_patient"),
    ],
)
def test_bad_config_raises_a_clear_value_error(tmp_path: Path, change, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        generate(tmp_path / "o", SynthConfig(**change), progress=False)
    assert not (tmp_path / "o").exists()  # validated before anything is written


def test_refuses_a_foreign_folder_but_overwrites_its_own_output(tmp_path: Path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not empty"):
        generate(foreign, SynthConfig(images=1, size=128), progress=False)
    assert (foreign / "notes.txt").read_text() == "keep me"

    out = generate(tmp_path / "ours", SynthConfig(images=5, size=128), progress=False)
    generate(out, SynthConfig(images=2, size=128), progress=False)  # fewer: no stale images left
    names = sorted(p.name for p in (out / "images").iterdir())
    assert names == sorted(r[0] for r in _rows(out / "Data_Entry_2017.csv")[1])
    assert len(names) == 2
