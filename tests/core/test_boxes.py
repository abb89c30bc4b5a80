import math

import numpy as np
import pytest

from cxr.boxes import LetterboxRecord, as_boxes, box_iou, clip_boxes, xywh_to_xyxy, xyxy_to_xywh


def test_xywh_round_trip():
    xywh = np.array([[225.08, 547.02, 86.78, 79.19], [0, 0, 1, 1]], np.float32)
    xyxy = xywh_to_xyxy(xywh)
    np.testing.assert_allclose(xyxy[0], [225.08, 547.02, 311.86, 626.21], rtol=1e-5)
    np.testing.assert_allclose(xyxy_to_xywh(xyxy), xywh, rtol=1e-5)
    assert xyxy.dtype == np.float32


def test_empty_boxes_have_shape_0x4():
    assert as_boxes([]).shape == (0, 4)
    assert box_iou([], [[0, 0, 1, 1]]).shape == (0, 1)


def test_bad_shape_rejected():
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        as_boxes(np.zeros((3, 5)))


def test_iou_known_values():
    a = [[0, 0, 10, 10]]
    b = [[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]]
    np.testing.assert_allclose(box_iou(a, b)[0], [1.0, 50 / 150, 0.0], rtol=1e-6)


def test_clip():
    np.testing.assert_array_equal(clip_boxes([[-5, -5, 120, 80]], 100, 50), [[0, 0, 100, 50]])


@pytest.mark.parametrize("h,w", [(1024, 1024), (2749, 2682), (300, 2000), (2000, 301), (17, 5)])
def test_letterbox_round_trip(h, w):
    rec = LetterboxRecord.fit(h, w, 512)
    assert max(rec.resized_shape) == 512
    boxes = np.array([[0, 0, w, h], [w * 0.1, h * 0.2, w * 0.5, h * 0.9]], np.float32)
    lb = rec.to_letterbox(boxes)
    assert (lb >= 0).all() and (lb <= 512).all()
    back = rec.from_letterbox(lb)
    np.testing.assert_allclose(back, boxes, atol=1e-3 * max(h, w))


def test_letterbox_centres_the_short_side():
    rec = LetterboxRecord.fit(1000, 500, 500)
    assert rec.scale == 0.5 and rec.pad_y == 0 and rec.pad_x == 125


def test_record_array_round_trip_with_and_without_spacing():
    for spacing in (None, (0.143, 0.139)):
        rec = LetterboxRecord.fit(2749, 2682, 512, spacing)
        back = LetterboxRecord.from_array(rec.to_array())
        assert back.orig_h == rec.orig_h and back.orig_w == rec.orig_w and back.size == 512
        assert math.isclose(back.scale, rec.scale, rel_tol=1e-6)
        if spacing is None:
            assert back.spacing_mm is None
        else:
            np.testing.assert_allclose(back.spacing_mm, spacing, rtol=1e-6)


def test_to_mm_uses_row_col_order():
    rec = LetterboxRecord.fit(100, 100, 64, spacing_mm=(0.2, 0.1))
    np.testing.assert_allclose(rec.to_mm([[10, 10, 20, 30]]), [[1.0, 2.0, 2.0, 6.0]], rtol=1e-6)
    assert LetterboxRecord.fit(100, 100, 64).to_mm([[0, 0, 1, 1]]) is None


def test_from_letterbox_clips_to_original_image():
    rec = LetterboxRecord.fit(100, 200, 64)
    out = rec.from_letterbox([[0, 0, 64, 64]])  # includes the padding
    np.testing.assert_allclose(out, [[0, 0, 200, 100]], atol=1e-4)
