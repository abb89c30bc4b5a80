"""cxr.training.masks: COCO RLE against pycocotools, Study.masks, and a masks file's errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pycoco_mask = pytest.importorskip("pycocotools.mask")

from cxr.errors import InvalidFileError  # noqa: E402
from cxr.training.annotations import NIHDataset, Study, to_coco  # noqa: E402
from cxr.training.masks import (  # noqa: E402
    InstanceMasks,
    decode_mask,
    encode_mask,
    rle_area,
    rle_counts,
    rle_from_counts,
)

ENTRY_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
                "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"


def _column_major_runs(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed counts, computed the slow obvious way."""
    runs, current, n = [], False, 0
    for v in mask.ravel(order="F"):
        if v != current:
            runs.append(n)
            current, n = v, 0
        n += 1
    return runs + [n]


def test_encode_decode_agree_with_pycocotools_and_the_definition():
    rng = np.random.default_rng(0)
    for trial in range(200):
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        mask = rng.random((h, w)) < rng.random()
        if trial % 4 == 0:  # long runs exercise the multi-group numbers
            mask = np.zeros((h, w), bool)
            mask[rng.integers(0, h):, rng.integers(0, w):] = True
        rle = encode_mask(mask)
        assert rle["size"] == [h, w] and isinstance(rle["counts"], str)
        assert rle_counts(rle["counts"]) == _column_major_runs(mask)
        assert np.array_equal(decode_mask(rle), mask)
        assert rle_area(rle) == mask.sum() == pycoco_mask.area({"size": [h, w], "counts": rle["counts"].encode()})
        assert rle_from_counts(_column_major_runs(mask), h, w) == rle
    big = np.zeros((2000, 3000), bool)
    big[1500:, 2500:] = True  # counts above 2**20: several 5-bit groups, negative deltas
    assert np.array_equal(decode_mask(encode_mask(big)), big)


def test_damaged_rle_is_refused_where_pycocotools_would_return_garbage():
    good = encode_mask(np.eye(4, 5, dtype=bool))
    truncated = {"size": [4, 5], "counts": good["counts"][:-1]}
    pycoco_mask.decode({"size": [4, 5], "counts": truncated["counts"].encode()})  # no error there
    with pytest.raises(InvalidFileError, match="cover .* pixels, its size 4x5 has 20"):
        decode_mask(truncated)
    with pytest.raises(InvalidFileError, match="hold '~'"):
        decode_mask({"size": [4, 5], "counts": "1~"})
    with pytest.raises(InvalidFileError, match="middle of a number"):
        rle_counts("0X")  # 'X' sets the continuation bit and then the string ends
    with pytest.raises(InvalidFileError, match="'size' must be"):
        decode_mask({"size": [4], "counts": good["counts"]})
    with pytest.raises(InvalidFileError, match="summing to H\\*W = 20"):
        decode_mask({"size": [4, 5], "counts": [3, 4]})
    assert np.array_equal(decode_mask({"size": [2, 2], "counts": [1, 2, 1]}), [[False, True], [True, False]])
    with pytest.raises(ValueError, match="2-D"):
        encode_mask(np.zeros((2, 2, 2), bool))
    with pytest.raises(ValueError, match="booleans or 0/1"):
        encode_mask(np.full((2, 2), 3))


def test_instance_masks_belong_to_boxes_and_decode_on_demand():
    a, b = np.zeros((6, 8), bool), np.zeros((6, 8), bool)
    a[1:3, 1:4], b[4:, 5:] = True, True
    masks = InstanceMasks((encode_mask(a), encode_mask(b)), 6, 8)
    study = Study(image_id="x.png", path=None, patient_id="p", findings=("Mass", "Nodule"),
                  boxes=[[1, 1, 4, 3], [5, 4, 8, 6]], box_labels=("Mass", "Nodule"), width=8, height=6, masks=masks)
    assert study.masks.count == 2 and np.array_equal(study.masks.stack(), np.stack([a, b]))
    assert np.array_equal(study.masks.mask(1), b)
    coco = to_coco([study], "nih-bbox")
    assert [ann["area"] for ann in coco["annotations"]] == [6.0, 6.0]  # mask pixels, as COCO defines area
    assert coco["annotations"][0]["segmentation"] == encode_mask(a)
    partial = InstanceMasks((encode_mask(a), None), 6, 8)
    assert partial.count == 1 and partial.mask(1) is None
    with pytest.raises(ValueError, match=r"boxes \[1\] have no mask"):
        partial.stack()
    with pytest.raises(ValueError, match="2 boxes but 1 masks"):
        Study(image_id="x.png", path=None, patient_id="p", boxes=[[1, 1, 4, 3], [5, 4, 8, 6]],
              box_labels=("Mass", "Nodule"), masks=InstanceMasks((encode_mask(a),), 6, 8))
    with pytest.raises(ValueError, match="masks are 6x8 .* the image is 6x9"):
        Study(image_id="x.png", path=None, patient_id="p", boxes=[[1, 1, 4, 3]], box_labels=("Mass",),
              width=9, height=6, masks=InstanceMasks((encode_mask(a),), 6, 8))
    with pytest.raises(ValueError, match=r"mask 0 has size \[6, 8\]"):
        InstanceMasks((encode_mask(a),), 5, 8)
    assert InstanceMasks((), 6, 8).stack().shape == (0, 6, 8)


def _nih_folder(root: Path, masks: dict | None) -> Path:
    root.mkdir()
    (root / "Data_Entry_2017.csv").write_text("\n".join([
        ENTRY_HEADER, "00000001_000.png,Mass,0,1,40,F,PA,32,32,0.1,0.1", "00000002_000.png,No Finding,0,2,50,M,PA,32,32,0.1,0.1",
    ]) + "\n")
    (root / "BBox_List_2017.csv").write_text(BBOX_HEADER + "\n00000001_000.png,Mass,4.5,6.25,10,8\n")
    if masks is not None:
        (root / "masks.json").write_text(json.dumps(masks))
    return root


def _masks_json(bbox: list, size: int = 32, segmentation: object = None) -> dict:
    mask = np.zeros((size, size), bool)
    mask[7:13, 5:14] = True
    return {"images": [{"id": 1, "file_name": "00000001_000.png", "height": size, "width": size}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "bbox": bbox, "iscrowd": 0,
                             "segmentation": segmentation if segmentation is not None else encode_mask(mask)}],
            "categories": [{"id": 5, "name": "Mass"}]}


def test_a_masks_file_is_matched_to_the_boxes_or_refused_with_the_reason(tmp_path: Path):
    ok = NIHDataset.from_dir(_nih_folder(tmp_path / "ok", _masks_json([4.5, 6.25, 10, 8])), val_fraction=0,
                             test_fraction=0)
    boxed, plain = ok.studies
    assert boxed.masks.count == 1 and boxed.masks.mask(0)[7:13, 5:14].all() and plain.masks is None
    assert ok.summary()["masks"] == 1 and ok.summary()["images_with_masks"] == 1
    assert NIHDataset.from_dir(tmp_path / "ok", masks=None).studies[0].masks is None
    with pytest.raises(FileNotFoundError, match="masks file .*nope.json does not exist"):
        NIHDataset.from_dir(tmp_path / "ok", masks=tmp_path / "nope.json")

    cases = [
        ("moved", _masks_json([9, 6.25, 10, 8]), r"Mass instance with box \[9.0, 6.25, 19.0, 14.25\].*matches no"),
        ("grid", _masks_json([4.5, 6.25, 10, 8], size=16), "is 16x16 .* there but 32x32 in the dataset"),
        ("polygon", _masks_json([4.5, 6.25, 10, 8], segmentation=[[1, 1, 5, 1, 5, 5]]), "polygon segmentation"),
        ("damaged", _masks_json([4.5, 6.25, 10, 8], segmentation={"size": [32, 32], "counts": "0"}), "cover 0 pixels"),
    ]
    for name, masks, message in cases:
        with pytest.raises(InvalidFileError, match=message):
            NIHDataset.from_dir(_nih_folder(tmp_path / name, masks))
    broken = _masks_json([4.5, 6.25, 10, 8])
    broken["annotations"][0]["category_id"] = 9
    with pytest.raises(InvalidFileError, match="category_id 9 is not in the file"):
        NIHDataset.from_dir(_nih_folder(tmp_path / "category", broken))
    (tmp_path / "category" / "masks.json").write_text("{not json")
    with pytest.raises(InvalidFileError, match="not a readable COCO JSON file"):
        NIHDataset.from_dir(tmp_path / "category")


def test_reading_and_counting_masks_need_no_pycocotools(tmp_path: Path):
    """cxr data info runs on boxes without the train extra: only pixels need pycocotools."""
    import subprocess
    import sys

    root = _nih_folder(tmp_path / "nih", _masks_json([4.5, 6.25, 10, 8]))
    script = (
        "import sys; sys.modules['pycocotools'] = None  # as if not installed\n"
        "from cxr.training.annotations import NIHDataset\n"
        f"ds = NIHDataset.from_dir({str(root)!r})\n"
        "print(ds.summary()['masks'])\n"
        "try:\n    ds.studies[0].masks.mask(0)\nexcept Exception as exc:\n    print(type(exc).__name__, exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    count, error = done.stdout.splitlines()
    assert count == "1"
    assert error.startswith("UsageError") and "pip install 'cxr-triton[train]'" in error
