"""The faithfulness measures of the served D-RISE maps (training/faithfulness.py, faithfulness_report.py):
each measure on cases whose answer is known, against outside references where one exists (scipy's
Spearman), and the model-randomisation check on a tiny trained model -- a map that does not change
when the weights do must fail it."""

from __future__ import annotations

import numpy as np
import pytest

from cxr.boxes import LetterboxRecord
from cxr.postprocess import DetectionArrays
from cxr.preprocess import PreprocessConfig, preprocess
from cxr.saliency import SaliencyConfig, black_value, explain
from cxr.training.faithfulness import (
    FaithfulnessConfig, auc, blurred, energy_inside, match_true_positives, perturbation_curves, pointing_hit,
    random_map, rank_correlation,
)
from cxr.training.faithfulness_report import TARGETS, faithfulness_config, format_faithfulness, summarise, targets

PRE = PreprocessConfig(size=64)


def _dets(boxes, scores, labels) -> DetectionArrays:
    return DetectionArrays(np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32),
                           np.asarray(labels, np.int64))


def test_true_positives_match_by_class_and_iou_greedily_by_score_each_finding_once():
    truth = np.array([[0, 0, 10, 10], [50, 50, 60, 60]], np.float32)
    dets = _dets([[0, 0, 10, 9], [0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 30]], [0.6, 0.9, 0.8, 0.7], [1, 1, 3, 1])
    # the 0.9 box takes finding 0; the 0.6 duplicate finds it taken; finding 1 is class 2, the 0.8 box class 3
    assert match_true_positives(dets, truth, [1, 2]) == [(1, 0)]
    assert match_true_positives(dets, truth, [1, 3]) == [(1, 0), (2, 1)]
    assert match_true_positives(_dets([[0, 0, 10, 3]], [0.9], [1]), truth, [1, 3]) == []  # IoU 0.3 < 0.5
    assert match_true_positives(DetectionArrays.empty(), truth, [1, 3]) == []


def test_pointing_game_takes_the_maximum_and_zhangs_band():
    region = np.zeros((100, 100), bool)
    region[40:60, 40:60] = True
    heat = np.zeros((100, 100), np.float32)
    heat[50, 50] = 1.0
    assert pointing_hit(heat, region)
    heat[50, 50], heat[50, 70] = 0.0, 1.0  # 11 px right of the region
    assert not pointing_hit(heat, region) and pointing_hit(heat, region, tolerance=15.0)
    assert not pointing_hit(heat, region, tolerance=10.0)


def test_energy_inside_counts_the_excess_over_the_median():
    region = np.zeros((10, 10), bool)
    region[:2] = True  # 20 % of the film
    heat = np.full((10, 10), 0.3, np.float32)  # the D-RISE baseline everywhere...
    assert energy_inside(heat, region) == 0.0  # ...is no evidence (a flat map)
    heat[:2] += 0.2
    assert energy_inside(heat, region) == pytest.approx(1.0)
    heat[5, 5] += 0.2  # as much excess at one outside pixel as at each inside one
    assert energy_inside(heat, region) == pytest.approx(20 / 21)


def test_rank_correlation_is_spearmans_rho_and_zero_for_a_flat_map():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a = rng.random((20, 30))
    b = a + rng.normal(0, 0.3, a.shape)
    b[0, :5] = b[0, 0]  # ties: average ranks
    assert rank_correlation(a, b) == pytest.approx(stats.spearmanr(a.ravel(), b.ravel()).statistic, abs=1e-9)
    assert rank_correlation(a, -a) == pytest.approx(-1.0)
    assert rank_correlation(a, np.full_like(a, 0.4)) == 0.0


def test_auc_and_the_random_map_are_what_they_say():
    assert auc(np.array([1.0, 0.5, 0.0])) == pytest.approx(0.5)
    assert auc(np.ones(17)) == pytest.approx(1.0)
    m = random_map((48, 64), 4, np.random.default_rng(1))
    assert m.shape == (48, 64) and 0 <= m.min() and m.max() <= 1
    assert np.abs(np.diff(m, axis=1)).max() < 0.2  # smooth: bilinear over 4 x 4 cells


def _region_detector(region: tuple[int, int, int, int], image: np.ndarray):
    """A detector that finds class 1 at ``region`` (letterbox xyxy), scored by the share of the region's
    pixels that are still the film's own (deleted or blurred ones are not)."""
    x1, y1, x2, y2 = region

    def detect(batch: np.ndarray):
        n = len(batch)
        kept = (np.abs(batch[:, 0, y1:y2, x1:x2] - image[None, 0, y1:y2, x1:x2]) < 1e-6).mean(axis=(1, 2))
        boxes = np.tile(np.array([[region]], np.float32), (n, 1, 1))
        return boxes, kept.astype(np.float32)[:, None], np.ones((n, 1), np.int64), np.ones(n, np.int64)

    return detect


def test_deleting_the_region_first_drops_the_score_faster_than_a_random_order():
    film = np.random.default_rng(3).uniform(0.2, 0.9, (48, 64)).astype(np.float32)  # texture: blurring changes it
    image, record = preprocess(film, PRE)  # 8 px bands above and below
    region = (8, 16, 24, 32)
    detect = _region_detector(region, image)
    truth_map = np.zeros(record.resized_shape, np.float32)
    truth_map[8:24, 8:24] = 1.0  # the region, in content rows
    orders = {"map": truth_map, "random": random_map(record.resized_shape, 4, np.random.default_rng(0))}
    curves = perturbation_curves(image, record, np.array(region, np.float32), 1, orders, detect,
                                 black=black_value(PRE), steps=8)
    assert curves["map_deletion"][0] == pytest.approx(1.0) and curves["map_deletion"][-1] == pytest.approx(0.0, abs=1e-6)
    assert auc(curves["map_deletion"]) < 0.5 * auc(curves["random_deletion"])
    assert auc(curves["map_insertion"]) > auc(curves["random_insertion"])
    canvas = blurred(image, record)
    assert np.allclose(canvas[:, :8], image[:, :8]) and not np.allclose(canvas, image)  # padding kept, film blurred


def test_summary_intervals_targets_and_table():
    rows = [{"study": f"s{i}", "class": "Nodule" if i % 2 else "Effusion", "seconds": 1.0, "score": 0.9,
             "hit": i != 0, "hit_strict": i > 1, "energy": 0.3, "area": 0.05, "map_deletion": 0.1,
             "random_deletion": 0.4, "map_insertion": 0.8, "random_insertion": 0.5, "rho": -0.1, "rho_abs": 0.1,
             "rho_self": 0.4} for i in range(10)]
    s = summarise(rows, bootstrap=200)
    assert s["all"]["n"] == 10 and s["all"]["pointing_game"]["value"] == pytest.approx(0.9)
    low, high = s["all"]["pointing_game"]["ci"]
    assert low <= 0.9 <= high and high <= 1.0
    assert s["all"]["energy_ratio"]["value"] == pytest.approx(6.0) and s["all"]["deletion_ratio"]["value"] == pytest.approx(0.25)
    assert set(s["targets"]) == set(TARGETS) and all(t["met"] for t in s["targets"].values())
    missed = targets({**s["all"], "pointing_game": {"value": 0.7, "ci": None}})["pointing_game"]
    assert missed["met"] is False and missed["gap"] == pytest.approx(0.2)
    table = format_faithfulness({**s, "settings": SaliencyConfig().to_dict(), "score_threshold": 0.3, "match_iou": 0.5,
                                 "studies": 10, "tolerance_px": 15.0, "steps": 16, "runtime": "onnx",
                                 "seconds_per_study": 1.0})
    assert "| Nodule | 5 |" in table and "| **all** | 10 |" in table and "pointing game >= 0.9: 0.90 met" in table
    assert "| 0.10 (0.10–0.10) | 0.40 (0.40–0.40) |" in table  # |rho| beside the trained map's own rho


def test_the_command_line_options_become_a_config():
    cfg = faithfulness_config(30, 100, "50, 200")
    assert (cfg.studies, cfg.saliency.masks, cfg.curve_masks, cfg.curve_studies) == (30, 100, (50, 200), 20)
    assert faithfulness_config(5).saliency == SaliencyConfig() and faithfulness_config(5).curve_masks == ()
    from cxr.errors import InvalidOptionError

    with pytest.raises(InvalidOptionError, match="mask counts separated by commas"):
        faithfulness_config(5, None, "50;100")
    with pytest.raises(InvalidOptionError, match="positive"):
        faithfulness_config(5, None, "0")


def test_model_randomisation_on_a_tiny_model_and_a_map_blind_to_the_weights_fails(checkpoint, synth_data):
    """Adebayo et al.'s check through the code `cxr evaluate --saliency` runs, on the suite's tiny
    trained Faster R-CNN: the re-initialised model really has other weights (and keeps every
    candidate), its map of the same target, masks and seed is computed and compared; and a map that
    does not change when the weights do -- the trained detector standing in for the re-initialised
    one -- correlates perfectly and fails the target."""
    import torch

    from cxr.postprocess import PostprocessConfig
    from cxr.serving.pipeline import Pipeline
    from cxr.training.checkpoint import load_checkpoint
    from cxr.training.faithfulness import detector_for, explained, measure_detection, randomised_checkpoint

    ckpt = load_checkpoint(checkpoint)
    rand = randomised_checkpoint(ckpt, seed=1234)
    changed = [k for k, v in ckpt.state.items() if v.dtype.is_floating_point and not torch.equal(v, rand.state[k])]
    assert len(changed) > 0.9 * sum(v.dtype.is_floating_point for v in ckpt.state.values())
    assert rand.model_config.candidates > ckpt.model_config.candidates
    trained = detector_for(ckpt, "torch")
    post = PostprocessConfig(score_threshold=0.01, iou_threshold=ckpt.postprocess.iou_threshold, max_detections=1)
    pipeline = Pipeline(trained, ckpt.preprocess, post)
    config = FaithfulnessConfig(saliency=SaliencyConfig(masks=24, grid=4, seed=0), steps=2)
    sm = next(s for s in (explained(pipeline, p, config.saliency) for p in sorted((synth_data / "images").glob("*.png")))
              if len(s.detections))
    region = np.zeros(sm.record.orig_h * sm.record.orig_w, bool).reshape(sm.record.orig_h, sm.record.orig_w)
    x1, y1, x2, y2 = (int(v) for v in sm.detections.boxes[0])
    region[y1:y2 + 1, x1:x2 + 1] = True
    rows = {}
    for name, other in (("re-initialised", detector_for(rand, "torch")), ("blind to the weights", trained)):
        rows[name] = measure_detection(sm, 0, region, detector=trained, random_detector=other, config=config,
                                       preprocess=ckpt.preprocess, rng=np.random.default_rng(0))
        rows[name].update(study="s", seconds=1.0, **{"class": "x"})
    assert rows["blind to the weights"]["rho"] == pytest.approx(rows["blind to the weights"]["rho_self"])
    assert rows["re-initialised"]["rho"] != pytest.approx(rows["re-initialised"]["rho_self"])  # another model, another map
    blind = summarise([rows["blind to the weights"]], bootstrap=10)["targets"]
    assert blind["rho"]["met"] is False and blind["rho_abs"]["met"] is False
