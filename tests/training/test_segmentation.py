"""The segment task: Mask R-CNN models, mask targets through augmentation, mask metrics, checkpoints, CLI.

Tiny models on tiny images, a step or two each: these check that the pieces fit and keep
their frames, not that a model learns.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cxr.cli import main
from cxr.errors import InvalidFileError, InvalidOptionError
from cxr.labels import get_labelset
from cxr.masks import CroppedMasks
from cxr.preprocess import PreprocessConfig
from cxr.training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from cxr.training.model import DETECTOR_TWIN, MASK_POOL, ModelConfig, arch_for_task, build_model
from cxr.training.torch_dataset import Augmenter, AugmentConfig, DetectionDataset, collate

TINY = dict(size=128, anchor_sizes=(16, 32, 64, 128, 256), rpn_pre_nms_top_n_train=100, rpn_post_nms_top_n_train=50,
            rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50, box_batch_size_per_image=32, representation_size=64,
            candidates=20, mask_head_channels=32, mask_head_layers=2)


def _tiny_batch(size: int = 128):
    """Two films with one bright disc each (class 1) and its mask, plus an empty film."""
    yy, xx = np.mgrid[:size, :size]
    images, targets = [], []
    for i, (cx, cy, r) in enumerate(((50, 60, 18), (80, 50, 25))):
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2
        x = torch.rand(3, size, size, generator=torch.Generator().manual_seed(i)) * 0.2 + torch.from_numpy(disc) * 1.5
        images.append(x)
        targets.append({"boxes": torch.tensor([[cx - r, cy - r, cx + r + 1, cy + r + 1]], dtype=torch.float32),
                        "labels": torch.tensor([1]), "masks": torch.from_numpy(disc[None].astype(np.uint8))})
    images.append(torch.rand(3, size, size) * 0.2)
    targets.append({"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64),
                    "masks": torch.zeros((0, size, size), dtype=torch.uint8)})
    return images, targets


@pytest.mark.parametrize("arch", list(DETECTOR_TWIN))
def test_a_mask_model_builds_trains_a_step_and_returns_28x28_masks(arch):
    torch.manual_seed(0)
    fpn = 256 if "resnet" in arch else 64
    model = build_model(ModelConfig(arch=arch, fpn_channels=fpn, **TINY)).train()
    images, targets = _tiny_batch()
    losses = model(images, targets)
    assert {"loss_mask", "loss_classifier", "loss_box_reg"} <= set(losses) and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.roi_heads.mask_predictor.mask_fcn_logits.weight.grad.abs().sum() > 0
    # the mask pooler reads the box pooler's levels: strides 8..32 (MobileNet) or 4..32 (ResNet), at 14 x 14
    heads = model.roi_heads
    assert heads.mask_roi_pool.featmap_names == heads.box_roi_pool.featmap_names
    assert heads.mask_roi_pool.output_size == (MASK_POOL, MASK_POOL)
    with torch.no_grad():
        feats = model.eval().backbone(torch.zeros(1, 3, 128, 128))
        out = model([images[0]])[0]
    pooled = [128 // f.shape[-1] for k, f in feats.items() if k in heads.mask_roi_pool.featmap_names]
    assert pooled[-3:] == [8, 16, 32]
    assert out["masks"].shape == (len(out["boxes"]), 1, 28, 28)  # not pasted: cxr.masks does that
    assert 0.0 <= out["masks"].min() and out["masks"].max() <= 1.0


def test_the_task_picks_the_architecture():
    assert arch_for_task("fasterrcnn_mobilenet_v2_fpn", "segment") == "maskrcnn_mobilenet_v2_fpn"
    assert arch_for_task("maskrcnn_resnet50_fpn", "segment") == "maskrcnn_resnet50_fpn"
    assert arch_for_task("fasterrcnn_resnet18_fpn", "detect") == "fasterrcnn_resnet18_fpn"
    assert ModelConfig(arch="maskrcnn_resnet50_fpn").task == "segment" and ModelConfig().task == "detect"
    with pytest.raises(InvalidOptionError, match="fasterrcnn_resnet18_fpn has none; choose --arch maskrcnn_resnet50_fpn"):
        arch_for_task("fasterrcnn_resnet18_fpn", "segment")
    with pytest.raises(InvalidOptionError, match="is a Mask R-CNN: pass --task segment"):
        arch_for_task("maskrcnn_mobilenet_v2_fpn", "detect")
    with pytest.raises(InvalidOptionError, match="unknown task 'paint'; choose one of: detect, segment"):
        arch_for_task("fasterrcnn_resnet50_fpn", "paint")


def test_a_mask_moves_with_its_pixels_through_the_affine():
    canvas = np.zeros((128, 128), np.float32)
    yy, xx = np.mgrid[:128, :128]
    blob = ((xx - 50) / 22.0) ** 2 + ((yy - 64) / 12.0) ** 2 <= 1  # an ellipse: a rotation shows
    canvas[blob] = 1.0
    box, labels = np.array([[28, 52, 73, 77]], np.float32), np.array([3])
    aug = Augmenter(AugmentConfig(degrees=20, translate=0.1, scale=(0.8, 1.2), brightness=0, contrast=0,
                                  noise_std=0, gamma=(1, 1)))
    for seed in range(5):
        out, boxes, labs, masks = aug.with_masks(canvas, box, labels, blob[None].astype(np.uint8), torch.Generator().manual_seed(seed))
        plain = aug(canvas, box, labels, torch.Generator().manual_seed(seed))  # the same draws without masks
        np.testing.assert_array_equal(plain[0], out)
        np.testing.assert_array_equal(plain[1], boxes)
        moved, pixels = masks[0].astype(bool), out > 0.5
        assert masks.dtype == np.uint8 and set(np.unique(masks)) <= {0, 1}
        assert (moved & pixels).sum() / (moved | pixels).sum() > 0.9, f"seed {seed}: the mask left its pixels"
        ys, xs = np.nonzero(moved)
        x1, y1, x2, y2 = boxes[0]
        assert x1 - 1 <= xs.min() and xs.max() < x2 + 1 and y1 - 1 <= ys.min() and ys.max() < y2 + 1


def test_dataset_targets_carry_masks_in_the_letterbox_frame(tiny_dataset):
    from cxr.training.annotations import NIHDataset

    ds = NIHDataset.from_dir(tiny_dataset, require_images=True)
    studies = ds.detection_studies()
    boxed = [s for s in studies if len(s.boxes)]
    data = DetectionDataset(studies, get_labelset("nih-bbox"), PreprocessConfig(size=128), masks=True)
    _, target = data[studies.index(boxed[0])]
    full = boxed[0].masks.stack()  # 256 x 256 films -> scale 0.5
    assert target["masks"].shape == (len(boxed[0].boxes), 128, 128) and target["masks"].dtype == torch.uint8
    for m, b, f in zip(target["masks"].numpy().astype(bool), target["boxes"].numpy(), full):
        ys, xs = np.nonzero(m)
        assert b[0] - 1 <= xs.min() and xs.max() < b[2] + 1 and b[1] - 1 <= ys.min() and ys.max() < b[3] + 1
        assert abs(m.sum() - f.sum() / 4) <= 0.15 * f.sum() / 4 + 4
    _, empty = data[next(i for i, s in enumerate(studies) if not len(s.boxes))]
    assert empty["masks"].shape == (0, 128, 128)
    augmented = DetectionDataset(studies, get_labelset("nih-bbox"), PreprocessConfig(size=128), masks=True, augment=Augmenter())
    _, targets = collate([augmented[i] for i in range(4)])
    assert all(len(t["masks"]) == len(t["boxes"]) for t in targets)


def test_studies_without_masks_are_refused_for_the_segment_task(tiny_dataset):
    from dataclasses import replace

    from cxr.training.annotations import NIHDataset

    studies = [s for s in NIHDataset.from_dir(tiny_dataset, require_images=True).detection_studies() if len(s.boxes)]
    with pytest.raises(FileNotFoundError, match="1 of 1 studies have boxes without instance masks"):
        DetectionDataset([replace(studies[0], masks=None)], get_labelset("nih-bbox"), PreprocessConfig(size=128), masks=True)


def _truth_as_predictions(tiny_dataset, jitter: int = 0):
    from cxr.training.annotations import NIHDataset
    from cxr.training.engine import ground_truth

    labelset = get_labelset("nih-bbox")
    studies = NIHDataset.from_dir(tiny_dataset, require_images=True).detection_studies()
    gts = ground_truth(studies, labelset, masks=True)
    rng, preds = np.random.default_rng(0), []
    for s, g in zip(studies, gts):
        full = s.masks.stack() if s.masks is not None else np.zeros((0, s.height, s.width), bool)
        if jitter:  # shift each mask: some stay matched at IoU 0.5, some do not
            full = np.stack([np.roll(m, int(rng.integers(-jitter, jitter + 1)), axis=1) for m in full]) if len(full) else full
        preds.append({"boxes": g["boxes"], "labels": g["labels"], "scores": rng.random(len(g["labels"])),
                      "masks": CroppedMasks.from_masks(full)})
    return preds, gts, labelset


def test_segm_ap_of_the_truth_against_itself_is_one(tiny_dataset):
    from cxr.training.seg_metrics import evaluate_masks, format_segm_table

    preds, gts, labelset = _truth_as_predictions(tiny_dataset)
    m = evaluate_masks(preds, gts, labelset.names, bootstrap=20)
    assert m["ap"] == m["ap50"] == m["ap75"] == 1.0
    assert m["dice_median"] == m["iou_mean"] == m["recall"] == 1.0 and m["n_matched"] == m["n_gt"] > 0
    assert m["ci"]["ap50"] == [1.0, 1.0]
    assert "| **all** |" in format_segm_table(m)


def test_matching_is_pycocotools_ap50_and_dice_follows_iou(tiny_dataset):
    """The matched pairs are segm AP50's true positives: their AP equals pycocotools' (an outside reference)."""
    from cxr.training.seg_metrics import MaskTable, coco_segm, match_masks, matched_ap50

    preds, gts, labelset = _truth_as_predictions(tiny_dataset, jitter=12)
    table = MaskTable(preds, gts, labelset.names)
    tp, iou = match_masks(table)
    assert 0 < tp.sum() < len(tp), "the jitter should leave some masks matched and some not"
    assert matched_ap50(table, tp) == pytest.approx(np.nanmean(coco_segm(table)[0]), abs=1e-12)
    assert np.all(iou[tp] >= 0.5) and np.all(np.isnan(iou[~tp]))


def test_crop_rle_is_pycocotools_encode():
    from cxr.training.masks import encode_mask
    from cxr.training.seg_metrics import crop_rle

    rng = np.random.default_rng(3)
    full = rng.random((5, 40, 30)) < rng.random((5, 1, 1))
    full[0] = False
    full[1, :, :] = True
    masks = CroppedMasks.from_masks(full)
    assert [crop_rle(masks, i) for i in range(5)] == [encode_mask(m) for m in full]


def test_a_checkpoint_keeps_the_task(tmp_path):
    mcfg = ModelConfig(arch="maskrcnn_mobilenet_v2_fpn", fpn_channels=64, **TINY)
    model = build_model(mcfg).eval()
    ckpt = Checkpoint(state={}, model_config=mcfg, preprocess=PreprocessConfig(size=128), class_names=("a", "b"))
    path = save_checkpoint(tmp_path / "seg.pt", model, ckpt)
    back = load_checkpoint(path)
    assert back.task == "segment" and back.meta["task"] == "segment" and back.metadata()["task"] == "segment"
    assert back.model_config.mask_head_channels == 32 and back.model_config.mask_head_layers == 2
    x = [torch.rand(3, 128, 128, generator=torch.Generator().manual_seed(1))]
    with torch.no_grad():
        torch.testing.assert_close(back.build_model()(x)[0]["masks"], model(x)[0]["masks"])
    obj = torch.load(path, weights_only=True)
    obj["meta"]["task"] = "detect"
    torch.save(obj, tmp_path / "edited.pt")
    with pytest.raises(InvalidFileError, match="says task 'detect' but its architecture maskrcnn_mobilenet_v2_fpn does 'segment'"):
        load_checkpoint(tmp_path / "edited.pt")


def test_train_segment_and_evaluate_cli(tiny_dataset, tmp_path, capsys):
    run = tmp_path / "run"
    rc = main(["train", "--data", str(tiny_dataset), "--preset", "cpu-demo", "--task", "segment", "--weights", "none",
               "--out", str(run), "--epochs", "1", "--size", "128", "--batch-size", "4"])
    assert rc == 0
    ckpt = load_checkpoint(run / "best.pt")
    assert ckpt.task == "segment" and ckpt.model_config.arch == "maskrcnn_mobilenet_v2_fpn"
    assert ckpt.meta["train_config"]["task"] == "segment" and "segm_ap50" in ckpt.meta["val_metrics"]
    assert "loss_mask" in ckpt.meta["history"][0]
    capsys.readouterr()
    out = tmp_path / "eval"
    rc = main(["evaluate", "--checkpoint", str(run / "best.pt"), "--data", str(tiny_dataset), "--out", str(out),
               "--bootstrap", "5", "--json"])
    assert rc == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["task"] == "segment" and "map50" in metrics
    for key in ("ap", "ap50", "ap75", "dice_median", "iou_median", "per_class", "ci", "recall"):
        assert key in metrics["segm"], key
    assert "## Instance masks" in (out / "metrics.md").read_text()
    rows = json.loads((out / "segmentations.json").read_text())
    assert all(set(r) == {"image_id", "category_id", "score", "bbox", "segmentation"} for r in rows)
    assert (out / "examples.png").stat().st_size > 0
    rc = main(["evaluate", "--checkpoint", str(run / "best.pt"), "--data", str(tiny_dataset), "--out", str(out),
               "--bootstrap", "0"])
    assert rc == 0 and "Instance masks:" in capsys.readouterr().out  # the segm table on the terminal too
