"""``cxr predict --png``: labels that read at a glance, whatever the film's size and brightness."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cxr.client.predict import annotated_png
from cxr.client.results import Detection, StudyResult


def _film(path, size, value):
    Image.fromarray(np.full((size, size), value, np.uint8)).save(path)
    return path


def _result(size, boxes):
    dets = tuple(Detection(label, 0.87, box) for label, box in boxes)
    return StudyResult(dets, "cxr_detector", "1", (size, size), 1.0)


def _label_rows(png, box_top, colour_rgb):
    """Height in px of the filled label box drawn above a detection box whose top edge is at ``box_top``."""
    a = np.asarray(Image.open(png).convert("RGB")).astype(int)
    filled = (np.abs(a - np.array(colour_rgb)).sum(-1) < 10).sum(1)  # pixels of the label colour per row
    rows = np.flatnonzero(filled[:box_top] > 20)
    return len(rows)


@pytest.mark.parametrize("size", [256, 1024, 2048])
def test_label_height_scales_with_the_film(tmp_path, size):
    top = size // 2
    png = annotated_png(_film(tmp_path / "f.png", size, 128), _result(size, [("Nodule", (size / 4, top, size / 2, top + size / 8))]),
                        tmp_path / "out.png")
    h = _label_rows(png, top, (0xff, 0x7f, 0x0e))  # first detection: the first colour
    assert h >= max(12, size / 40), (size, h)  # 1024 px film: >= 26 px of label, not ~10
    assert h <= size / 15, (size, h)  # and not a banner over the film


@pytest.mark.parametrize("film", [0, 255])
def test_label_text_contrasts_with_its_background_on_dark_and_bright_film(tmp_path, film):
    size, top = 1024, 400
    png = annotated_png(_film(tmp_path / "f.png", size, film), _result(size, [("Mass", (300, top, 500, 600))]), tmp_path / "o.png")
    a = np.asarray(Image.open(png).convert("RGB")).astype(int)
    label = a[top - 40 : top, 300:500]
    background = np.all(np.abs(label - np.array((0xff, 0x7f, 0x0e))) < 10, -1)
    text = label.sum(-1) < 100  # black text on the orange box
    assert background.sum() > 1000, "no filled label box above the detection"
    assert text.sum() > 50, "no dark text inside the label box"


def test_label_of_a_box_at_the_top_edge_stays_on_the_film(tmp_path):
    size = 512
    png = annotated_png(_film(tmp_path / "f.png", size, 60), _result(size, [("Effusion", (400, 0, 512, 100))]), tmp_path / "o.png")
    a = np.asarray(Image.open(png).convert("RGB")).astype(int)
    orange = np.all(np.abs(a - np.array((0xff, 0x7f, 0x0e))) < 10, -1)
    assert orange[: size // 20, 300:].sum() > 200, "the label went off the film instead of inside the box"


def test_labels_of_findings_at_one_spot_do_not_cover_each_other(tmp_path):
    size = 1024
    boxes = [("Effusion", (600, 500, 700, 700)), ("Pneumonia", (610, 510, 720, 690))]
    png = annotated_png(_film(tmp_path / "f.png", size, 100), _result(size, boxes), tmp_path / "o.png")
    a = np.asarray(Image.open(png).convert("RGB")).astype(int)
    for rgb in ((0xff, 0x7f, 0x0e), (0x1f, 0x77, 0xb4)):  # both label boxes are there, whole
        mask = np.all(np.abs(a[:500] - np.array(rgb)) < 10, -1)
        assert (mask.sum(1) > 60).sum() >= 20, rgb
