"""cxr.masks against an outside reference: torchvision's ``paste_masks_in_image`` and ``F.interpolate``.

Evaluation, the in-process pipeline and the Triton postprocess all paste masks with
:mod:`cxr.masks`, so a bug there would cancel out of every parity check; here it is
compared with torchvision's own paste instead, on random boxes (inside, across the edge,
smaller than a pixel).  The two agree to float32 rounding (PyTorch's kernel fuses a
multiply-add numpy cannot); a mask pixel may differ only where the probability is that
close to 0.5.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
roi_heads = pytest.importorskip("torchvision.models.detection.roi_heads")

from cxr.boxes import LetterboxRecord  # noqa: E402
from cxr.masks import (  # noqa: E402
    MASK_THRESHOLD, CroppedMasks, paste_in_original, paste_masks, paste_probabilities, resize_bilinear, wire_size,
)
from cxr.postprocess import PostprocessConfig, postprocess, postprocess_indexed  # noqa: E402

ROUNDING = 1e-6  # float32 rounding of probabilities in [0, 1]


def _boxes_meeting(rng, n: int, height: int, width: int) -> np.ndarray:
    """Random xyxy boxes that overlap the image (torchvision's paste fails on boxes that miss it)."""
    out = []
    while len(out) < n:
        x, y = rng.uniform(-0.3 * width, 1.1 * width), rng.uniform(-0.3 * height, 1.1 * height)
        w, h = (rng.uniform(0.2, 3.0) if rng.random() < 0.15 else rng.uniform(2, 0.9 * s) for s in (width, height))
        if x + w > 0 and y + h > 0 and x < width and y < height:
            out.append([x, y, x + w, y + h])
    return np.asarray(out, np.float32)


@pytest.mark.parametrize("seed", range(3))
def test_resize_equals_torch_bilinear_interpolate(seed):
    rng = np.random.default_rng(seed)
    for _ in range(40):
        h, w = rng.integers(1, 40, 2)
        out_h, out_w = rng.integers(1, 400, 2)
        x = rng.random((h, w)).astype(np.float32)
        ref = torch.nn.functional.interpolate(torch.from_numpy(x)[None, None], size=(int(out_h), int(out_w)),
                                              mode="bilinear", align_corners=False)[0, 0].numpy()
        np.testing.assert_allclose(resize_bilinear(x, out_h, out_w), ref, atol=ROUNDING, rtol=0)


@pytest.mark.parametrize("shape", [(300, 200), (64, 640), (512, 512)])
def test_paste_equals_torchvision_paste_masks_in_image(shape):
    height, width = shape
    rng = np.random.default_rng(height)
    boxes = _boxes_meeting(rng, 120, height, width)
    # probabilities of a real head: mostly near 0 or 1, a band in between
    probs = (1 / (1 + np.exp(-rng.normal(0, 4, (len(boxes), 28, 28))))).astype(np.float32)
    ref = roi_heads.paste_masks_in_image(torch.from_numpy(probs)[:, None], torch.from_numpy(boxes), (height, width),
                                         padding=1)[:, 0].numpy()
    for i in range(len(boxes)):
        crop, (x0, y0, x1, y1) = paste_probabilities(probs[i], boxes[i], height, width)
        full = np.zeros((height, width), np.float32)
        full[y0:y1, x0:x1] = crop
        np.testing.assert_allclose(full, ref[i], atol=ROUNDING, rtol=0, err_msg=f"box {boxes[i].tolist()}")
    masks = paste_masks(probs, boxes, height, width).stack()
    differ = masks != (ref > MASK_THRESHOLD)
    assert np.all(np.abs(ref[differ] - MASK_THRESHOLD) <= ROUNDING), "a mask pixel differs away from the threshold"
    assert masks.sum() > 0.05 * masks.size / len(boxes)  # the comparison saw masks, not empty frames


def test_paste_in_original_is_torchvision_paste_of_the_unletterboxed_box():
    """torchvision un-resizes boxes, then pastes at the original size; the letterbox adds an offset."""
    record = LetterboxRecord.fit(700, 1200, 256)  # wide: padding above and below
    rng = np.random.default_rng(1)
    boxes = _boxes_meeting(rng, 80, 256, 256)
    boxes = boxes[(boxes[:, 3] > record.pad_y) & (boxes[:, 1] < 256 - record.pad_y)]  # on the film (paste's crash)
    probs = rng.random((len(boxes), 28, 28)).astype(np.float32)
    pad = torch.tensor([record.pad_x, record.pad_y] * 2, dtype=torch.float32)
    unboxed = (torch.from_numpy(boxes) - pad) / torch.tensor(record.scale, dtype=torch.float32)
    ref = roi_heads.paste_masks_in_image(torch.from_numpy(probs)[:, None], unboxed, (700, 1200), padding=1)[:, 0].numpy()
    masks = paste_in_original(probs, boxes, record)
    assert (masks.height, masks.width) == (700, 1200)
    differ = masks.stack() != (ref > MASK_THRESHOLD)
    assert np.all(np.abs(ref[differ] - MASK_THRESHOLD) <= ROUNDING)


def test_a_full_mask_covers_its_box_in_the_original_image():
    record = LetterboxRecord.fit(900, 600, 256)  # tall: padding left and right
    box = np.array([[100.0, 60.0, 160.0, 140.0]], np.float32)  # letterbox frame
    masks = paste_in_original(np.ones((1, 28, 28), np.float32), box, record)
    x0, y0, x1, y1 = record.from_letterbox(box)[0]
    rx0, ry0, rx1, ry1 = masks.rects[0]
    # the 1-px padding adds half a mask pixel of 0 -> 1 ramp, 1/56 of the box per side
    for got, want, side in ((rx0, x0, x1 - x0), (rx1, x1, x1 - x0), (ry0, y0, y1 - y0), (ry1, y1, y1 - y0)):
        assert abs(got - want) <= side / 56 + 2, (masks.rects[0].tolist(), [x0, y0, x1, y1])
    assert masks.crops[0][2:-2, 2:-2].all()  # the corners are where both ramps meet below 0.5


def test_a_box_in_the_padding_or_zero_detections_paste_nothing():
    record = LetterboxRecord.fit(100, 400, 256)  # content rows 96..160 of the canvas
    empty = paste_in_original(np.ones((1, 28, 28), np.float32), np.array([[10, 2, 50, 40]], np.float32), record)
    assert empty.rects.tolist() == [[0, 0, 0, 0]] and not empty.stack().any()
    none = paste_in_original(np.zeros((0, 28, 28), np.float32), np.zeros((0, 4), np.float32), record)
    assert len(none) == 0 and none.stack().shape == (0, 100, 400)
    rects, bits = none.to_wire()
    assert rects.shape == (0, 4) and bits.shape == (0,)
    assert len(CroppedMasks.from_wire(rects, bits, 100, 400)) == 0


def test_wire_form_round_trips_and_its_size_is_the_crops_bits():
    rng = np.random.default_rng(4)
    full = np.zeros((6, 50, 70), bool)
    full[0, 3:9, 5:6] = True  # one column: 6 pixels, 1 byte
    full[1] = rng.random((50, 70)) < 0.3  # scattered over the whole image
    full[2, 49, 69] = True  # the last pixel
    full[4, 10:40, 20:60] = rng.random((30, 40)) < 0.9
    full[5, 0, 0] = True  # full[3] stays empty
    masks = CroppedMasks.from_masks(full)
    assert masks.rects[3].tolist() == [0, 0, 0, 0] and masks.rects[2].tolist() == [69, 49, 70, 50]
    assert masks.rects[0].tolist() == [5, 3, 6, 9]
    rects, bits = masks.to_wire()
    assert rects.dtype == np.int32 and bits.dtype == np.uint8
    assert len(bits) == wire_size(rects) == sum(-(-int(c.size) // 8) for c in masks.crops)
    back = CroppedMasks.from_wire(rects, bits, 50, 70)
    np.testing.assert_array_equal(back.stack(), full)
    np.testing.assert_array_equal(back.areas(), full.sum(axis=(1, 2)))
    with pytest.raises(ValueError, match=f"hold {len(bits) - 1} bytes; the 6 rects need {len(bits)}"):
        CroppedMasks.from_wire(rects, bits[:-1], 50, 70)
    with pytest.raises(ValueError, match=r"mask rect 0 \[5, 3, 6, 99\] is not a rectangle"):
        CroppedMasks.from_wire(np.array([[5, 3, 6, 99]]), np.zeros(12, np.uint8), 50, 70)


def test_postprocess_indexed_names_the_candidate_of_each_detection():
    rng = np.random.default_rng(2)
    record = LetterboxRecord.fit(500, 800, 256)
    xy = rng.uniform(0, 230, (60, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(3, 60, (60, 2))], axis=1).astype(np.float32)
    scores, labels = rng.random(60).astype(np.float32), rng.integers(0, 4, 60)
    config = PostprocessConfig(score_threshold=0.2, max_detections=12)
    rows, det = postprocess_indexed(boxes, scores, labels, record, config, valid_count=50)
    plain = postprocess(boxes, scores, labels, record, config, valid_count=50)
    np.testing.assert_array_equal(det.boxes, plain.boxes)
    assert len(rows) == len(det) > 0 and rows.max() < 50
    np.testing.assert_array_equal(scores[rows], det.scores)
    np.testing.assert_array_equal(labels[rows], det.labels)
    np.testing.assert_array_equal(record.from_letterbox(boxes[rows]), det.boxes)
