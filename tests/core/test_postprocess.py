"""cxr.postprocess against an outside reference: torchvision's NMS and box ops.

Every parity check runs both of its sides through :func:`cxr.postprocess.postprocess`,
so a bug there cancels out; here it is compared with torchvision instead.  The
reference follows torchvision's ``RoIHeads.postprocess_detections`` order: drop
unusable rows, clip to the image, remove zero-size boxes, per-class NMS, top-k.

Ties: cxr orders equal scores by input index (lower first).  torchvision documents no
tie order, so the reference gets scores that encode cxr's order strictly (their rank)
instead of relying on torchvision's sort happening to be stable; the tie rule itself
is asserted on its own.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tv_ops = pytest.importorskip("torchvision.ops")

from cxr.boxes import LetterboxRecord  # noqa: E402
from cxr.postprocess import PostprocessConfig, batched_nms, nms, postprocess  # noqa: E402

MIN_SIZE = 1e-3  # cxr.boxes.valid_boxes' default, the size below which a box is no box

# (orig_h, orig_w): square (no padding), wide (padding above and below), tall (left
# and right), extreme aspect ratios (almost all of the S x S frame is padding).
SHAPES = [(1024, 1024), (600, 1400), (2000, 700), (40, 900), (900, 31)]


def _strict_rank(scores: np.ndarray) -> torch.Tensor:
    """Distinct scores in cxr's order (descending score, then ascending index)."""
    s = np.asarray(scores, np.float64)
    order = np.lexsort((np.arange(len(s)), -s))
    rank = np.empty(len(s), np.float32)
    rank[order] = np.arange(len(s), 0, -1)
    return torch.from_numpy(rank)


def reference(boxes, scores, labels, record: LetterboxRecord, config=PostprocessConfig(), valid_count=None):
    """torchvision's RoIHeads.postprocess_detections steps on the letterbox candidates."""
    k = len(scores) if valid_count is None else valid_count
    b = torch.as_tensor(np.asarray(boxes, np.float32).reshape(-1, 4)[:k])
    s = torch.as_tensor(np.asarray(scores, np.float32).reshape(-1)[:k])
    lab = torch.as_tensor(np.asarray(labels, np.int64).reshape(-1)[:k])
    # cxr's score threshold is inclusive (torchvision's RoIHeads uses >); label 0 is background.
    usable = torch.isfinite(s) & torch.isfinite(b).all(1) & (s >= config.score_threshold) & (lab > 0)
    b, s, lab = b[usable], s[usable], lab[usable]
    pad = torch.tensor([record.pad_x, record.pad_y] * 2, dtype=torch.float32)
    b = tv_ops.clip_boxes_to_image((b - pad) / torch.tensor(record.scale, dtype=torch.float32), (record.orig_h, record.orig_w))
    big = tv_ops.remove_small_boxes(b, MIN_SIZE)
    b, s, lab = b[big], s[big], lab[big]
    keep = tv_ops.batched_nms(b, _strict_rank(s.numpy()), lab, config.iou_threshold)[: config.max_detections]
    return b[keep].numpy(), s[keep].numpy(), lab[keep].numpy()


def assert_same(dets, ref) -> None:
    boxes, scores, labels = ref
    np.testing.assert_array_equal(dets.labels, labels)
    np.testing.assert_array_equal(dets.scores, scores)
    np.testing.assert_allclose(dets.boxes, boxes, rtol=0, atol=1e-4)
    assert dets.boxes.dtype == np.float32 and dets.scores.dtype == np.float32 and dets.labels.dtype == np.int64


def _clustered_boxes(rng, n: int, size: float, *, grid: float | None = None) -> np.ndarray:
    """``n`` xyxy boxes in ``[0, size]``, jittered around a few centres so that NMS has work.

    ``grid`` snaps coordinates to multiples of it (exact in float32, so torchvision's
    coordinate-offset trick in batched_nms adds no rounding).
    """
    centres = rng.uniform(0, size, (int(rng.integers(1, 9)), 2))
    c = centres[rng.integers(0, len(centres), n)] + rng.normal(0, 0.03 * size, (n, 2))
    wh = rng.uniform(0.02 * size, 0.4 * size, (len(centres), 2))[rng.integers(0, len(centres), n)]
    wh *= rng.uniform(0.8, 1.25, (n, 2))
    boxes = np.concatenate([c - wh / 2, c + wh / 2], 1).clip(0, size)  # the graph clamps to the frame
    if grid:
        boxes = np.round(boxes / grid) * grid
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + (grid or 0.5))
    return boxes.astype(np.float32)


# ------------------------------------------------------------------ nms, batched_nms


@pytest.mark.parametrize("seed", range(20))
def test_nms_and_batched_nms_keep_torchvisions_indices_without_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400))
    boxes = _clustered_boxes(rng, n, 256.0, grid=0.125)
    scores = ((rng.permutation(n) + 1) / (n + 1)).astype(np.float32)  # distinct: no ties
    labels = rng.integers(1, 5, n)
    tb, ts, tl = torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels)
    for thr in (0.3, 0.5, 0.7, 1.0):
        np.testing.assert_array_equal(nms(boxes, scores, thr), tv_ops.nms(tb, ts, thr).numpy())
        np.testing.assert_array_equal(batched_nms(boxes, scores, labels, thr), tv_ops.batched_nms(tb, ts, tl, thr).numpy())


def test_nms_iou_exactly_at_a_threshold_float32_cannot_hold():
    # IoU 3/10: float32 rounds it to 0.30000001, above the float64 threshold 0.3;
    # torchvision's kernel compares float32 IoU with the threshold as a double.
    boxes = np.array([[0, 0, 6.5, 1], [3.5, 0, 10, 1]], np.float32)
    scores = np.array([0.9, 0.8], np.float32)
    expected = tv_ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), 0.3).numpy()
    np.testing.assert_array_equal(nms(boxes, scores, 0.3), expected)


def test_equal_scores_keep_the_lower_index_first():
    same = np.array([[0, 0, 10, 10], [0, 0, 10, 10]], np.float32)
    np.testing.assert_array_equal(nms(same, np.array([0.5, 0.5]), 0.5), [0])
    apart = np.array([[0, 0, 10, 10], [50, 50, 60, 60], [100, 100, 110, 110]], np.float32)
    np.testing.assert_array_equal(nms(apart, np.array([0.5, 0.7, 0.5]), 0.5), [1, 0, 2])
    # across classes too: the order depends on the input index, not on the class id
    np.testing.assert_array_equal(batched_nms(apart, np.array([0.5, 0.5, 0.5]), np.array([3, 1, 2]), 0.5), [0, 1, 2])


def test_nms_of_zero_area_and_empty_inputs():
    zero = np.array([[5, 5, 5, 5], [5, 5, 5, 5], [0, 0, 10, 10]], np.float32)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    expected = tv_ops.nms(torch.from_numpy(zero), torch.from_numpy(scores), 0.5).numpy()
    np.testing.assert_array_equal(nms(zero, scores, 0.5), expected)
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).shape == (0,)
    assert batched_nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64), 0.5).shape == (0,)


# ------------------------------------------------------------------ postprocess


def _random_case(seed: int):
    rng = np.random.default_rng(seed)
    h, w = SHAPES[seed % len(SHAPES)]
    spacing = (0.143, 0.139) if seed % 2 else None
    record = LetterboxRecord.fit(h, w, 256, spacing)
    k = int(rng.integers(0, 300))
    boxes = _clustered_boxes(rng, k, 256.0)
    scores = rng.uniform(0, 1, k).astype(np.float32)
    if seed % 3 == 0:  # ties: a few score levels only
        scores = rng.choice(np.array([0.2, 0.5, 0.9], np.float32), k)
    labels = rng.integers(0, 5, k)  # 0 = background, never a detection
    config = PostprocessConfig(score_threshold=float(rng.choice([0.0, 0.05, 0.3])),
                               iou_threshold=float(rng.choice([0.3, 0.5, 0.7])),
                               max_detections=int(rng.choice([0, 1, 5, 20, 100])))
    valid = None if seed % 4 == 0 else int(rng.integers(0, k + 1))
    return boxes, scores, labels, record, config, valid


@pytest.mark.parametrize("seed", range(40))
def test_postprocess_equals_torchvision_on_random_candidates(seed):
    boxes, scores, labels, record, config, valid = _random_case(seed)
    dets = postprocess(boxes, scores, labels, record, config, valid_count=valid)
    assert_same(dets, reference(boxes, scores, labels, record, config, valid))
    assert (np.diff(dets.scores) <= 0).all()
    if record.spacing_mm is None:
        assert dets.boxes_mm is None
    else:
        np.testing.assert_allclose(dets.boxes_mm, record.to_mm(dets.boxes))


def test_top_k_counts_only_boxes_that_survive_unletterboxing():
    # 512 x 1024 film in 256: content rows 64..192, padding above and below.
    record = LetterboxRecord.fit(512, 1024, 256)
    x = np.arange(5, dtype=np.float32)[:, None] * np.array([50, 0, 50, 0], np.float32) + np.array([0, 0, 40, 0], np.float32)
    in_padding = x + np.array([0, 5, 0, 50], np.float32)  # rows 5..50: all padding
    real = x + np.array([0, 100, 0, 150], np.float32)
    boxes = np.concatenate([in_padding, real])
    scores = np.array([0.9, 0.89, 0.88, 0.87, 0.86, 0.5, 0.49, 0.48, 0.47, 0.46], np.float32)
    labels = np.ones(10, np.int64)
    config = PostprocessConfig(max_detections=5)
    dets = postprocess(boxes, scores, labels, record, config)
    assert len(dets) == 5, f"{len(dets)} detections came back, 5 real boxes qualify"
    assert_same(dets, reference(boxes, scores, labels, record, config))


def test_a_box_in_the_padding_does_not_suppress_a_real_one():
    record = LetterboxRecord.fit(512, 1024, 256)  # padding: rows 0..64 and 192..256
    boxes = np.array([[0, 0, 100, 64],  # all padding: no box in the image
                      [0, 10, 100, 70]], np.float32)  # IoU 0.77 with it in the 256 frame; rows 0..24 of the film
    scores, labels = np.array([0.9, 0.8], np.float32), np.array([1, 1])
    dets = postprocess(boxes, scores, labels, record)
    np.testing.assert_allclose(dets.boxes, [[0, 0, 400, 24]], atol=1e-4)
    assert_same(dets, reference(boxes, scores, labels, record))


def test_nms_compares_the_parts_of_boxes_inside_the_image():
    record = LetterboxRecord.fit(512, 1024, 256)
    # IoU 0.3 in the 256 frame, but both reach into the padding; inside the film they
    # are rows 0..144 and 0..224 of the same region, IoU 0.64: one finding, one box.
    boxes = np.array([[0, 0, 100, 100], [0, 64, 100, 120]], np.float32)
    scores, labels = np.array([0.9, 0.8], np.float32), np.array([2, 2])
    dets = postprocess(boxes, scores, labels, record)
    np.testing.assert_allclose(dets.boxes, [[0, 0, 400, 144]], atol=1e-4)
    assert_same(dets, reference(boxes, scores, labels, record))


def test_score_ties_keep_candidate_order_across_classes():
    record = LetterboxRecord.fit(256, 256, 256)
    boxes = np.array([[10, 10, 50, 50], [100, 100, 150, 150], [10, 10, 50, 50], [12, 10, 50, 50]], np.float32)
    scores = np.full(4, 0.5, np.float32)
    labels = np.array([2, 1, 1, 1])
    dets = postprocess(boxes, scores, labels, record)
    np.testing.assert_array_equal(dets.labels, [2, 1, 1])  # the 4th: same class, IoU 0.95 with the 3rd
    np.testing.assert_allclose(dets.boxes, boxes[:3])
    assert_same(dets, reference(boxes, scores, labels, record))


def test_classes_are_suppressed_separately():
    record = LetterboxRecord.fit(256, 256, 256)
    box = [20, 20, 80, 80]
    boxes = np.array([box, box, [22, 20, 80, 80], box], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    labels = np.array([1, 2, 1, 3])
    dets = postprocess(boxes, scores, labels, record)
    np.testing.assert_array_equal(dets.labels, [1, 2, 3])
    np.testing.assert_array_equal(dets.scores, np.array([0.9, 0.8, 0.6], np.float32))
    assert_same(dets, reference(boxes, scores, labels, record))


def test_zero_area_and_inverted_boxes_are_dropped():
    record = LetterboxRecord.fit(256, 256, 256)
    boxes = np.array([[10, 10, 10, 50], [10, 10, 50, 10], [50, 50, 10, 10], [10, 10, 50, 50]], np.float32)
    scores = np.array([0.9, 0.9, 0.9, 0.3], np.float32)
    dets = postprocess(boxes, scores, np.ones(4), record)
    np.testing.assert_allclose(dets.boxes, boxes[3:])
    assert_same(dets, reference(boxes, scores, np.ones(4), record))


def test_non_finite_rows_are_dropped():
    record = LetterboxRecord.fit(600, 1400, 256, (0.2, 0.2))
    nan, inf = np.nan, np.inf
    boxes = np.array([[10, 100, 50, 150], [nan, 100, 50, 150], [10, 100, inf, 150], [-inf, 100, 50, 150],
                      [60, 100, 90, 150], [100, 100, 150, 150]], np.float32)
    scores = np.array([0.5, 0.99, 0.98, 0.97, nan, inf], np.float32)
    dets = postprocess(boxes, scores, np.ones(6), record)
    assert len(dets) == 1 and dets.scores.tolist() == [0.5]
    assert np.isfinite(dets.boxes).all() and np.isfinite(dets.boxes_mm).all()
    assert_same(dets, reference(boxes, scores, np.ones(6), record))


@pytest.mark.parametrize("spacing", [None, (0.1, 0.1)])
def test_zero_candidates(spacing):
    record = LetterboxRecord.fit(300, 200, 64, spacing)
    for dets in (postprocess(np.zeros((0, 4)), np.zeros(0), np.zeros(0), record),
                 postprocess(np.ones((5, 4)), np.ones(5), np.ones(5), record, valid_count=0),
                 postprocess([[1, 1, 9, 9]], [0.9], [1], record, PostprocessConfig(max_detections=0)),
                 postprocess([[1, 1, 9, 9]], [0.01], [1], record, PostprocessConfig(score_threshold=0.5))):
        assert len(dets) == 0 and dets.boxes.shape == (0, 4) and dets.labels.dtype == np.int64
        assert dets.boxes_mm is None if spacing is None else dets.boxes_mm.shape == (0, 4)


def test_valid_count_hides_padding_rows_and_full_count_equals_none():
    record = LetterboxRecord.fit(256, 256, 256)
    boxes = np.array([[10, 10, 50, 50], [100, 100, 150, 150], [200, 200, 250, 250]], np.float32)
    scores = np.array([0.3, 0.2, 0.99], np.float32)  # the last row is padding, however high its score
    dets = postprocess(boxes, scores, np.ones(3), record, valid_count=2)
    np.testing.assert_array_equal(dets.scores, np.array([0.3, 0.2], np.float32))
    full = postprocess(boxes, scores, np.ones(3), record, valid_count=3)
    assert_same(full, reference(boxes, scores, np.ones(3), record))
    assert_same(full, (postprocess(boxes, scores, np.ones(3), record).boxes, full.scores, full.labels))
    with pytest.raises(ValueError, match="valid_count 4"):
        postprocess(boxes, scores, np.ones(3), record, valid_count=4)


def test_score_threshold_is_inclusive_and_background_is_dropped():
    record = LetterboxRecord.fit(256, 256, 256)
    boxes = np.array([[10, 10, 50, 50], [100, 100, 150, 150]], np.float32)
    scores, labels = np.array([0.25, 0.9], np.float32), np.array([1, 0])
    dets = postprocess(boxes, scores, labels, record, PostprocessConfig(score_threshold=0.25))
    np.testing.assert_array_equal(dets.scores, np.array([0.25], np.float32))
