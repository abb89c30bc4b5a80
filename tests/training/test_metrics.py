"""cxr.training.metrics and plots: hand-computed cases, pycocotools agreement, edge cases."""

from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import pytest

pytest.importorskip("pycocotools")

from cxr.training import box_metrics as B  # noqa: E402
from cxr.training import metrics as M  # noqa: E402

NAMES = ["Mass", "Nodule"]


def pred(boxes, scores, labels):
    return {"boxes": np.asarray(boxes, np.float32).reshape(-1, 4), "scores": np.asarray(scores, np.float32),
            "labels": np.asarray(labels, np.int64)}


def gt(boxes, labels):
    return {"boxes": np.asarray(boxes, np.float32).reshape(-1, 4), "labels": np.asarray(labels, np.int64)}


def empty_pred():
    return pred(np.zeros((0, 4)), [], [])


def empty_gt():
    return gt(np.zeros((0, 4)), [])


def hand_case():
    """2 images, 3 Mass boxes, 4 Mass predictions + 1 Nodule prediction (Nodule has no GT).

    Mass predictions by score: 0.9 TP (img A), 0.8 FP (img B), 0.7 TP (img B), 0.6 FP (img A);
    the second Mass in image A is never found.
    """
    gts = [gt([[10, 10, 50, 50], [100, 100, 140, 140]], [1, 1]), gt([[20, 20, 80, 80]], [1])]
    preds = [
        pred([[12, 12, 50, 50], [300, 300, 340, 340], [400, 400, 440, 440]], [0.9, 0.6, 0.85], [1, 1, 2]),
        pred([[200, 200, 240, 240], [20, 20, 80, 70]], [0.8, 0.7], [1, 1]),
    ]
    return preds, gts


def synth(n=100, k=8, seed=0, tie_scores=False):
    """Random findings with noisy, sometimes mislabelled predictions and false alarms."""
    rng = np.random.default_rng(seed)
    preds, gts = [], []
    for _ in range(n):
        m = rng.integers(0, 4)
        xy, wh = rng.uniform(0, 800, (m, 2)), rng.uniform(30, 200, (m, 2))
        gb, gl = np.c_[xy, xy + wh], rng.integers(1, k + 1, m)
        pb, ps, pl = [], [], []
        for b, lab in zip(gb, gl):
            if rng.random() < 0.8:
                bb = b + rng.normal(0, 15, 4)
                bb[2:] = np.maximum(bb[2:], bb[:2] + 1)
                pb.append(bb)
                pl.append(lab if rng.random() < 0.85 else rng.integers(1, k + 1))
                ps.append(rng.uniform(0.3, 1))
        for _ in range(rng.integers(0, 6)):
            xy, wh = rng.uniform(0, 800, 2), rng.uniform(30, 200, 2)
            pb.append(np.r_[xy, xy + wh])
            pl.append(rng.integers(1, k + 1))
            ps.append(rng.uniform(0, 0.8))
        ps = np.round(ps, 2) if tie_scores else np.asarray(ps)
        preds.append(pred(np.reshape(pb, (-1, 4)), ps, pl))
        gts.append(gt(gb, gl))
    return preds, gts


def coco_ap_by_hand(precision_at_recall) -> float:
    """pycocotools' 101-point AP from a function recall -> interpolated precision."""
    return float(np.mean([precision_at_recall(r) for r in np.linspace(0, 1, 101)]))


# --- AP ---------------------------------------------------------------------------------


def test_hand_made_ap_matches_pycocotools_and_hand_computation():
    preds, gts = hand_case()
    # recall/precision after each Mass prediction: (1/3, 1), (1/3, 1/2), (2/3, 2/3), (2/3, 1/2);
    # interpolated precision is 1 up to recall 1/3, 2/3 up to 2/3, then 0 (recall never reaches it).
    expected = coco_ap_by_hand(lambda r: 1.0 if r <= 1 / 3 else (2 / 3 if r <= 2 / 3 else 0.0))
    assert expected == pytest.approx(56 / 101)
    out = M.evaluate_detections(preds, gts, NAMES, bootstrap=0)
    assert out["per_class"]["Mass"]["ap50"] == pytest.approx(expected, abs=1e-12)
    assert out["per_class"]["Mass"]["ap40"] == pytest.approx(expected, abs=1e-12)
    assert out["map50"] == pytest.approx(expected, abs=1e-12)  # Nodule has no GT: excluded
    data = B.DetectionTable(preds, gts, NAMES)
    coco = B.coco_eval(data)
    assert coco[1, 0] == pytest.approx(expected, abs=1e-12)
    assert B.PreMatched(data, 0.4).ap(0.5)[0] == pytest.approx(expected, abs=1e-12)


def test_class_without_ground_truth_is_none_and_left_out_of_means():
    preds, gts = hand_case()
    out = M.evaluate_detections(preds, gts, NAMES, bootstrap=0)
    nodule = out["per_class"]["Nodule"]
    assert nodule["ap50"] is None and nodule["ap40"] is None and nodule["ap50_95"] is None
    assert nodule["n_gt"] == 0 and nodule["auroc"] is None
    assert out["map50_95"] == pytest.approx(out["per_class"]["Mass"]["ap50_95"])


def test_iou_between_04_and_05_counts_for_map40_only():
    # IoU of [0,0,100,45] with [0,0,100,100] is 0.45.
    out = M.evaluate_detections([pred([[0, 0, 100, 45]], [0.9], [1])], [gt([[0, 0, 100, 100]], [1])], NAMES, bootstrap=0)
    assert out["map50"] == 0.0
    assert out["map40"] == pytest.approx(1.0)


@pytest.mark.parametrize("tie_scores", [False, True], ids=["continuous-scores", "tied-scores"])
def test_own_ap_agrees_with_pycocotools(tie_scores):
    preds, gts = synth(seed=1, tie_scores=tie_scores)
    data = B.DetectionTable(preds, gts, [f"c{i}" for i in range(8)])
    coco, fast = B.coco_eval(data), B.PreMatched(data, M.FROC_IOU)
    np.testing.assert_allclose(fast.ap(0.5), coco[1], atol=1e-12)
    np.testing.assert_allclose(fast.ap(0.4), coco[0], atol=1e-12)


def test_weighted_ap_equals_pycocotools_on_a_resampled_dataset():
    # The bootstrap reweights images instead of duplicating them; check that equals
    # running pycocotools on the duplicated images (continuous scores: no tie ambiguity).
    preds, gts = synth(n=60, seed=2)
    names = [f"c{i}" for i in range(8)]
    idx = np.random.default_rng(5).integers(0, 60, 60)
    coco = B.coco_eval(B.DetectionTable([preds[i] for i in idx], [gts[i] for i in idx], names))
    w = np.bincount(idx, minlength=60).astype(float)
    fast = B.PreMatched(B.DetectionTable(preds, gts, names), M.FROC_IOU)
    np.testing.assert_allclose(fast.ap(0.5, w), coco[1], atol=1e-12)
    np.testing.assert_allclose(fast.ap(0.4, w), coco[0], atol=1e-12)


# --- FROC -------------------------------------------------------------------------------


def test_froc_hand_made():
    preds, gts = hand_case()
    # All classes by score: .9 TP, .85 FP (Nodule), .8 FP, .7 TP, .6 FP; 2 images, 3 lesions.
    # FP/image after each: 0, .5, 1, 1, 1.5 -> 1/3 found up to 1 FP/image exclusive of the
    # (1 FP/image, 2 TP) point, which is reached at rate 1.
    out = M.evaluate_detections(preds, gts, NAMES, bootstrap=0)
    expected = {"0.125": 1 / 3, "0.25": 1 / 3, "0.5": 1 / 3, "1": 2 / 3, "2": 2 / 3, "4": 2 / 3, "8": 2 / 3}
    assert out["froc"] == pytest.approx(expected)
    assert out["froc_mean"] == pytest.approx(11 / 21)


def test_froc_is_class_aware_and_duplicates_are_false_positives():
    g = [gt([[0, 0, 100, 100]], [1])]
    wrong_class = M.evaluate_detections([pred([[0, 0, 100, 100]], [0.9], [2])], g, NAMES, bootstrap=0)
    assert wrong_class["froc"]["8"] == 0.0
    dup = [pred([[0, 0, 100, 100], [0, 0, 100, 98]], [0.9, 0.8], [1, 1])]
    fps, sens = _froc_curve(dup, g)
    np.testing.assert_allclose(fps, [0, 0, 1])  # the second hit on the same lesion is an FP
    np.testing.assert_allclose(sens, [0, 1, 1])


def _froc_curve(preds, gts):
    from cxr.training.plots import froc_curve

    return froc_curve(preds, gts, NAMES)


# --- image level ------------------------------------------------------------------------


def test_auroc_hand_made_with_ties():
    y = [1, 1, 0, 0, 1, 0]
    s = [0.9, 0.5, 0.5, 0.1, 0.3, 0.3]
    # positive-negative pairs won: 0.9 beats all 3; 0.5 ties one (1/2) and beats 2;
    # 0.3 beats 0.1 and ties 0.3 -> (3 + 2.5 + 1.5) / 9
    assert M.auroc(y, s) == pytest.approx(7 / 9)
    assert M.auroc([1, 1], [0.2, 0.3]) is None
    assert M.auroc([0, 1, 0, 1], [0, 0, 0, 0]) == pytest.approx(0.5)


def test_image_level_thresholds_and_choice():
    # Mass image scores 0.9 (pos), 0.6 (pos), 0.7 (neg), none (neg).
    box = [[10, 10, 60, 60]]
    preds = [pred(box, [0.9], [1]), pred(box, [0.6], [1]), pred(box, [0.7], [1]), empty_pred()]
    gts = [gt(box, [1]), gt(box, [1]), empty_gt(), empty_gt()]
    th = M.choose_thresholds(preds, gts, NAMES)
    # F1 at >=0.9: 2/3, at >=0.7: 1/2, at >=0.6: 4/5 -> 0.6, placed halfway to the next score (0).
    assert th["Mass"] == pytest.approx(0.3)
    assert th["Nodule"] == M.DEFAULT_THRESHOLD  # no positives to learn from
    out = M.evaluate_detections(preds, gts, NAMES, thresholds=th, bootstrap=0)
    mass = out["image_level"]["per_class"]["Mass"]
    assert (mass["precision"], mass["recall"], mass["f1"], mass["accuracy"]) == pytest.approx((2 / 3, 1.0, 0.8, 0.75))
    assert mass["auroc"] == pytest.approx(0.75)  # 0.9 beats both; 0.6 beats only the empty image
    out_default = M.evaluate_detections(preds, gts, NAMES, bootstrap=0)
    assert out_default["per_class"]["Mass"]["threshold"] == 0.5
    assert out_default["per_class"]["Mass"]["recall"] == pytest.approx(1.0)
    assert out["image_level"]["f1"] == pytest.approx(0.8)  # macro over classes with positives (Mass)
    anyf = out["image_level"]["any_finding"]
    assert (anyf["n_pos"], anyf["n_neg"]) == (2, 2)
    with pytest.raises(ValueError, match="unknown classes"):
        M.evaluate_detections(preds, gts, NAMES, thresholds={"Mas": 0.4}, bootstrap=0)


# --- edge cases -------------------------------------------------------------------------


def test_perfect_predictions():
    preds, gts = synth(n=30, seed=3)
    perfect = [pred(g["boxes"], np.linspace(1.0, 0.9, len(g["labels"])), g["labels"]) for g in gts]
    out = M.evaluate_detections(perfect, gts, [f"c{i}" for i in range(8)], bootstrap=20)
    assert out["map50"] == pytest.approx(1.0) and out["map40"] == pytest.approx(1.0)
    assert out["map50_95"] == pytest.approx(1.0)
    assert set(out["froc"].values()) == {1.0} and out["froc_mean"] == 1.0
    assert out["image_level"]["auroc"] == pytest.approx(1.0)
    assert out["image_level"]["any_finding"]["auroc"] == pytest.approx(1.0)
    assert out["image_level"]["f1"] == pytest.approx(1.0)


def test_no_predictions_give_zero():
    _, gts = synth(n=20, seed=4)
    out = M.evaluate_detections([empty_pred() for _ in gts], gts, [f"c{i}" for i in range(8)], bootstrap=10)
    assert out["map50"] == 0.0 and out["map40"] == 0.0 and out["map50_95"] == 0.0
    assert out["froc_mean"] == 0.0
    assert out["image_level"]["recall"] == 0.0 and out["image_level"]["f1"] == 0.0
    assert out["image_level"]["precision"] == 0.0  # silent model: 0, not undefined
    assert out["image_level"]["auroc"] == pytest.approx(0.5)  # all scores tie at 0


def test_empty_images_everywhere():
    out = M.evaluate_detections([empty_pred()] * 3, [empty_gt()] * 3, NAMES, bootstrap=10)
    assert out["n_images"] == 3 and out["n_gt"] == 0
    assert out["map50"] is None and out["map50_95"] is None and out["froc_mean"] is None
    assert out["image_level"]["auroc"] is None and out["image_level"]["any_finding"]["auroc"] is None
    assert all(v is None for v in out["ci"].values())
    json.dumps(out, allow_nan=False)
    assert "Mass" in M.format_metrics_table(out)


def test_empty_images_mixed_in_do_not_change_ap():
    preds, gts = hand_case()
    a = M.evaluate_detections(preds, gts, NAMES, bootstrap=0)
    b = M.evaluate_detections(preds + [empty_pred()] * 2, gts + [empty_gt()] * 2, NAMES, bootstrap=0)
    assert a["map50"] == b["map50"]
    assert b["froc"]["1"] == pytest.approx(2 / 3)  # same hits, FP per image now over 4 images


def test_bad_inputs_name_the_image():
    with pytest.raises(ValueError, match="'scan-7'.*outside 1..2"):
        M.evaluate_detections([pred([[0, 0, 1, 1]], [0.5], [3])], [empty_gt()], NAMES, image_ids=["scan-7"])
    with pytest.raises(ValueError, match="x2 < x1"):
        M.evaluate_detections([pred([[5, 0, 1, 1]], [0.5], [1])], [empty_gt()], NAMES)
    with pytest.raises(ValueError, match="one of each"):
        M.evaluate_detections([empty_pred()], [], NAMES)


# --- bootstrap and output ---------------------------------------------------------------


def test_bootstrap_brackets_point_estimate_and_is_deterministic():
    preds, gts = synth(n=100, seed=0, tie_scores=True)
    names = [f"c{i}" for i in range(8)]
    a = M.evaluate_detections(preds, gts, names, bootstrap=100, seed=7)
    b = M.evaluate_detections(preds, gts, names, bootstrap=100, seed=7)
    c = M.evaluate_detections(preds, gts, names, bootstrap=100, seed=8)
    assert a["ci"] == b["ci"] and a["ci"] != c["ci"]
    point = {"map50": a["map50"], "map40": a["map40"], "froc_mean": a["froc_mean"],
             "image_f1": a["image_level"]["f1"], "image_auroc": a["image_level"]["auroc"],
             "any_finding_auroc": a["image_level"]["any_finding"]["auroc"]}
    for key, value in point.items():
        lo, hi = a["ci"][key]
        assert lo <= value <= hi, key
        assert hi - lo > 0, key
    assert M.evaluate_detections(preds, gts, names, bootstrap=0)["ci"] == {}


def test_output_is_json_serialisable_with_required_keys():
    preds, gts = synth(n=40, seed=5)
    names = [f"c{i}" for i in range(8)]
    out = M.evaluate_detections(preds, gts, names, thresholds=M.choose_thresholds(preds, gts, names), bootstrap=10)
    text = json.dumps(out, allow_nan=False)
    assert json.loads(text) == out
    for key in ("map50", "map40", "map50_95", "froc", "froc_mean", "per_class", "image_level", "ci", "n_images"):
        assert key in out
    assert list(out["froc"]) == ["0.125", "0.25", "0.5", "1", "2", "4", "8"]
    assert set(out["per_class"]["c0"]) >= {"ap50", "ap40", "ap50_95", "n_gt", "auroc", "precision", "recall", "f1", "threshold"}
    assert set(out["image_level"]) >= {"precision", "recall", "f1", "accuracy", "auroc", "per_class", "any_finding"}
    table = M.format_metrics_table(out)
    assert table.count("\n| c") == 8 and "any finding" in table and "FROC" in table


def test_pycocotools_prints_nothing(capsys):
    preds, gts = hand_case()
    with contextlib.redirect_stderr(io.StringIO()):
        M.evaluate_detections(preds, gts, NAMES, bootstrap=0)
    assert capsys.readouterr().out == ""


# --- plots ------------------------------------------------------------------------------


def _is_png(path) -> bool:
    return path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_write_pngs(tmp_path):
    pytest.importorskip("matplotlib")
    from cxr.training import plots

    preds, gts = synth(n=12, k=2, seed=6)
    assert _is_png(plots.plot_pr_froc(preds, gts, NAMES, tmp_path / "pr_froc.png"))
    history = [{"epoch": e, "iteration": e * 10 + i, "loss": 2.0 / (1 + e + i / 10), "loss_classifier": 1.0 / (1 + e),
                "loss_box_reg": 0.5 / (1 + e), "lr": 0.01 * min(1, (e * 10 + i + 1) / 5)} for e in range(3) for i in range(10)]
    history += [{"epoch": e, "val_map50": 0.2 * (e + 1)} for e in range(3)]
    assert _is_png(plots.plot_loss_curve(history, tmp_path / "loss.png"))
    assert _is_png(plots.plot_loss_curve(history[:5], tmp_path / "loss_no_map.png"))
    images = [np.random.default_rng(i).random((256, 256)).astype(np.float32) for i in range(5)]
    assert _is_png(plots.plot_examples(images, preds[:5], gts[:5], NAMES, tmp_path / "ex.png", max_images=4))
    # empty-everything still draws
    assert _is_png(plots.plot_pr_froc([empty_pred()], [empty_gt()], NAMES, tmp_path / "empty.png"))
