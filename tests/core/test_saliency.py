"""cxr.saliency: D-RISE masks, similarity, maps and the map's way back to the original grid (no server)."""

from __future__ import annotations

import numpy as np
import pytest

from cxr.boxes import LetterboxRecord
from cxr.errors import InvalidOptionError
from cxr.postprocess import DetectionArrays
from cxr.preprocess import PreprocessConfig, letterbox, preprocess
from cxr.saliency import (
    DriseRun, SaliencyConfig, black_value, content_box, crop_content, explain, mask_coverage, masked_images, random_masks,
    saliency_maps, similarity, to_original,
)

PRE = PreprocessConfig(size=64)


def test_masks_are_deterministic_per_seed_and_cached():
    config = SaliencyConfig(masks=16, grid=4, seed=3)
    a = random_masks(64, config)
    assert a.shape == (16, 64, 64) and a.dtype == np.float16 and not a.flags.writeable
    assert random_masks(64, SaliencyConfig(masks=16, grid=4, seed=3)) is a  # cached: computed once per key
    random_masks.cache_clear()
    again = random_masks(64, config)
    assert again is not a and np.array_equal(again, a)  # recomputed: the same values
    assert not np.array_equal(random_masks(64, SaliencyConfig(masks=16, grid=4, seed=4)), a)
    assert 0.0 <= float(a.min()) and float(a.max()) <= 1.0


def test_masks_keep_about_p_and_are_soft_at_cell_edges():
    masks = random_masks(64, SaliencyConfig(masks=400, grid=8, keep=0.3, seed=0)).astype(np.float32)
    assert abs(masks.mean() - 0.3) < 0.02
    # bilinear upsampling: a cell edge is a ramp, not a step (values strictly between 0 and 1 exist)
    assert ((masks > 0.05) & (masks < 0.95)).mean() > 0.2


def test_the_random_shift_moves_cell_edges():
    masks = random_masks(64, SaliencyConfig(masks=64, grid=4, seed=1)).astype(np.float32)
    # without a shift every mask would change fastest at the same columns
    edges = {int(np.argmax(np.abs(np.diff(m[:, :], axis=1)).sum(0))) for m in masks}
    assert len(edges) > 4


@pytest.mark.parametrize("field,value,message", [
    ("masks", 0, "masks must be an integer in"), ("grid", 1, "grid must be an integer in"),
    ("keep", 1.0, "keep probability must be in"), ("seed", -1, "seed must be an integer"),
    ("masks", 2.5, "got 2.5"),
])
def test_config_names_the_bad_value(field, value, message):
    with pytest.raises(InvalidOptionError, match=message):
        SaliencyConfig(**{field: value})


def test_masked_pixels_become_preprocessed_black():
    film = np.full((64, 64), 0.7, np.float32)
    image, _ = preprocess(film, PRE)
    black_film, _ = preprocess(np.zeros((64, 64), np.float32), PRE)
    masks = np.zeros((2, 64, 64), np.float16)
    masks[1] = 1.0
    out = masked_images(image, masks, black_value(PRE))
    np.testing.assert_allclose(out[0], black_film, atol=1e-6)  # fully masked = what preprocess makes of black
    np.testing.assert_allclose(out[1], image, atol=1e-6)  # fully kept = the input


# ----------------------------------------------------------------------------- a synthetic detector


def _region_detector(regions: dict[int, tuple[int, int, int, int]], black: np.ndarray, film: np.ndarray):
    """A "detector" with one candidate per class: the class's box, scored by how much of the
    film inside it survived (1 unmasked, 0 fully masked)."""
    calls = []

    def detect(batch: np.ndarray):
        calls.append(len(batch))
        n = len(batch)
        boxes = np.zeros((n, len(regions), 4), np.float32)
        scores = np.zeros((n, len(regions)), np.float32)
        labels = np.zeros((n, len(regions)), np.int64)
        for j, (label, (x1, y1, x2, y2)) in enumerate(regions.items()):
            kept = (batch[:, 0, y1:y2, x1:x2] - black[0]) / (film[0, y1:y2, x1:x2] - black[0])
            boxes[:, j] = (x1, y1, x2, y2)
            scores[:, j] = kept.reshape(n, -1).mean(1)
            labels[:, j] = label
        return boxes, scores, labels, np.full((n,), len(regions), np.int64)

    detect.calls = calls
    return detect


def _study(h: int = 48, w: int = 64):
    film = np.full((h, w), 0.6, np.float32)
    image, record = preprocess(film, PRE)
    return image, record


def test_a_detector_that_looks_at_one_region_gets_a_map_that_peaks_there():
    image, record = _study()  # 48 x 64 film: letterboxed with 8 px bands above and below
    regions = {1: (8, 16, 24, 32), 2: (40, 36, 56, 52)}  # letterbox frame
    detect = _region_detector(regions, black_value(PRE), image)
    dets = DetectionArrays(record.from_letterbox(np.array(list(regions.values()), np.float32)),
                           np.array([0.9, 0.8], np.float32), np.array([1, 2], np.int64))
    maps = explain(image, record, dets, detect, SaliencyConfig(masks=300, grid=8, seed=0), PRE, batch_size=8)
    assert maps.shape == (2, *record.resized_shape) == (2, 48, 64)
    assert detect.calls == [8] * 37 + [4]  # 300 masks in batches of 8, one set for both detections
    for d, (x1, y1, x2, y2) in enumerate(regions.values()):
        y1, y2 = y1 - int(record.pad_y), y2 - int(record.pad_y)  # content-region rows
        peak_y, peak_x = np.unravel_index(np.argmax(maps[d]), maps[d].shape)
        assert x1 - 4 <= peak_x < x2 + 4 and y1 - 4 <= peak_y < y2 + 4, (d, peak_y, peak_x)
        inside = np.zeros(maps[d].shape, bool)
        inside[y1:y2, x1:x2] = True
        # far from the region a pixel tells nothing: E[w | kept] = E[w] = p there
        assert abs(maps[d][~inside].mean() - 0.5) < 0.05
        assert maps[d][inside].mean() > maps[d][~inside].mean() + 0.05, d
    # each map explains its own detection: it is hotter on its region than the other map is
    (ax1, ay1, ax2, ay2), (bx1, by1, bx2, by2) = (np.array(r) - [0, 8, 0, 8] for r in regions.values())
    assert maps[0, ay1:ay2, ax1:ax2].mean() > maps[1, ay1:ay2, ax1:ax2].mean() + 0.05
    assert maps[1, by1:by2, bx1:bx2].mean() > maps[0, by1:by2, bx1:bx2].mean() + 0.05


def test_the_map_is_in_similarity_units():
    image, record = _study()
    regions = {1: (8, 16, 24, 32)}
    detect = _region_detector(regions, black_value(PRE), image)
    dets = DetectionArrays(record.from_letterbox(np.array([regions[1]], np.float32)), np.ones(1, np.float32),
                           np.ones(1, np.int64))
    maps = explain(image, record, dets, detect, SaliencyConfig(masks=200, grid=4, seed=2), PRE)
    # E[w | pixel kept] with w = the kept share of the region in [0, 1]
    assert 0.0 <= maps.min() and maps.max() <= 1.0 and maps[0, 10:14, 10:14].mean() > 0.5


def test_weights_that_ignore_the_pixels_give_a_flat_map_whatever_the_masks():
    """The map divides by how often each pixel was kept, not by its expectation N p: with N p the
    masks' own coverage pattern (about sqrt((1 - p) / (N p)), 14 % at 50 masks) would show in every
    map, and two unrelated models' maps would rank-correlate through it."""
    masks = random_masks(64, SaliencyConfig(masks=50, grid=4, seed=9))
    constant = np.full((50, 2), 0.4, np.float32)
    constant[:, 1] = 0.9
    maps = saliency_maps(constant, masks)
    np.testing.assert_allclose(maps[0], 0.4, rtol=1e-5)
    np.testing.assert_allclose(maps[1], 0.9, rtol=1e-5)
    coverage = mask_coverage(masks) / (50 * 0.5)
    assert coverage.std() > 0.05  # what N p would have left in the map
    assert mask_coverage(masks) is mask_coverage(masks)  # computed once per cached mask set


def test_zero_detections_give_zero_maps_and_no_masked_pass():
    image, record = _study()
    detect = _region_detector({1: (8, 16, 24, 32)}, black_value(PRE), image)
    maps = explain(image, record, DetectionArrays.empty(), detect, SaliencyConfig(masks=50), PRE)
    assert maps.shape == (0, 48, 64) and detect.calls == []


def test_similarity_is_iou_times_score_of_the_same_class_only():
    targets = np.array([[0, 0, 10, 10]], np.float32)
    boxes = np.array([[[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 5], [0, 0, 10, 10]]], np.float32)
    scores = np.array([[0.9, 0.8, 0.7, 0.99]], np.float32)
    labels = np.array([[2, 1, 1, 1]])
    w = similarity(targets, np.array([1]), (boxes, scores, labels, np.array([3])), (0, 0, 64, 64))
    # class 2 does not count; the 4th row is padding (valid = 3); the best is IoU 1 x 0.8
    assert w.shape == (1, 1) and w[0, 0] == pytest.approx(0.8)
    # a candidate reaching into the padding is compared by its part on the film
    w = similarity(targets, np.array([1]), (np.array([[[0, -10, 10, 10]]], np.float32), np.array([[0.5]], np.float32),
                                            np.array([[1]]), np.array([1])), (0, 0, 64, 64))
    assert w[0, 0] == pytest.approx(0.5)


def test_run_refuses_a_map_before_every_pass_is_in():
    image, record = _study()
    dets = DetectionArrays(np.array([[10, 10, 20, 20]], np.float32), np.ones(1, np.float32), np.ones(1, np.int64))
    run = DriseRun(image, record, dets, SaliencyConfig(masks=16), PRE)
    parts = run.batches(8)
    run.add(parts[1], (np.zeros((8, 0, 4), np.float32), np.zeros((8, 0), np.float32), np.zeros((8, 0)), np.zeros(8)))
    with pytest.raises(RuntimeError, match="8 of 16 masked passes have no answer"):
        run.maps()


# ----------------------------------------------------------------------------- frames


def test_map_back_to_the_original_grid_round_trips_through_the_letterbox():
    h, w = 300, 200
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    bump = np.exp(-(((yy - 210) / 40) ** 2 + ((xx - 60) / 30) ** 2)).astype(np.float32)
    canvas, record = letterbox(bump, 128)  # the way in: what preprocess does to the film
    content = crop_content(canvas, record)
    assert content.shape == record.resized_shape == (128, 85)
    back = to_original(content, record)
    assert back.shape == (h, w)
    assert np.abs(back - bump).max() < 0.03
    peak = np.unravel_index(np.argmax(back), back.shape)
    assert abs(peak[0] - 210) <= 2 and abs(peak[1] - 60) <= 2


def test_a_box_in_the_content_map_lands_on_the_same_box_in_original_pixels():
    record = LetterboxRecord.fit(300, 200, 128)
    box = np.array([[30, 40, 60, 90]], np.float32)  # letterbox frame
    full = np.zeros((128, 128), np.float32)
    full[40:90, 30:60] = 1.0
    back = to_original(crop_content(full, record), record)
    x1, y1, x2, y2 = record.from_letterbox(box)[0]
    ys, xs = np.nonzero(back > 0.5)
    assert abs(xs.min() - x1) <= 2 and abs(xs.max() + 1 - x2) <= 2 and abs(ys.min() - y1) <= 2 and abs(ys.max() + 1 - y2) <= 2
    assert content_box(record) == (record.pad_x, 0.0, record.pad_x + 85, 128.0)


def test_to_original_names_the_expected_shape():
    record = LetterboxRecord.fit(300, 200, 128)
    with pytest.raises(ValueError, match=r"is \[128, 85\] .* got \[128, 128\]"):
        to_original(np.zeros((128, 128), np.float32), record)
