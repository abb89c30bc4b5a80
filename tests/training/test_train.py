"""Model factory, augmentation, optimisation, checkpoints and the train/evaluate CLI on tiny data."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from cxr.cli import main
from cxr.labels import get_labelset
from cxr.preprocess import PreprocessConfig
from cxr.training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from cxr.training.torch_dataset import Augmenter, AugmentConfig, DetectionDataset, collate
from cxr.training.model import ARCHITECTURES, ModelConfig, build_model, load_pretrained

warnings.filterwarnings("ignore", message=".*trainable_backbone_layers.*")

TINY = dict(arch="fasterrcnn_mobilenet_v3_large_fpn", size=128, anchor_sizes=(16, 32, 64, 128, 256),
            rpn_pre_nms_top_n_train=100, rpn_post_nms_top_n_train=50, rpn_pre_nms_top_n_test=100,
            rpn_post_nms_top_n_test=50, box_batch_size_per_image=32, representation_size=64)


def _tiny_batch(n=2, size=128):
    """Films with one bright square each (class 1), plus one empty film."""
    g = torch.Generator().manual_seed(0)
    images, targets = [], []
    for i in range(n):
        x = torch.rand(3, size, size, generator=g) * 0.2
        x0, y0 = 20 + 10 * i, 30 + 5 * i
        x[:, y0 : y0 + 40, x0 : x0 + 40] += 1.5
        images.append(x)
        targets.append({"boxes": torch.tensor([[x0, y0, x0 + 40, y0 + 40]], dtype=torch.float32), "labels": torch.tensor([1])})
    images.append(torch.rand(3, size, size, generator=g) * 0.2)
    targets.append({"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)})
    return images, targets


def test_unknown_architecture_lists_choices():
    with pytest.raises(ValueError, match="fasterrcnn_resnet50_fpn, fasterrcnn_resnet50_fpn_v2"):
        ModelConfig(arch="yolov5")


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_architecture_builds_without_downloads(arch):
    model = build_model(ModelConfig(**{**TINY, "arch": arch})).eval()
    with torch.no_grad():
        out = model([torch.zeros(3, 128, 128)])
    assert out[0]["boxes"].shape[1] == 4


def test_model_refuses_unpreprocessed_input():
    model = build_model(ModelConfig(**TINY)).eval()
    with pytest.raises(ValueError, match="preprocessed 128x128"):
        model([torch.zeros(3, 100, 128)])


def test_a_few_steps_reduce_the_loss_and_empty_images_train():
    torch.manual_seed(0)
    model = build_model(ModelConfig(**TINY)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images, targets = _tiny_batch()
    losses = []
    for _ in range(12):
        loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3]), losses


def test_only_empty_images_train_without_error():
    model = build_model(ModelConfig(**TINY)).train()
    images, targets = _tiny_batch()
    losses = model(images[-1:], targets[-1:])
    assert losses["loss_box_reg"].item() == 0.0
    sum(losses.values()).backward()


def test_checkpoint_round_trip_restores_identical_outputs(tmp_path):
    cfg = ModelConfig(**TINY)
    model = build_model(cfg).eval()
    ls = get_labelset("nih-bbox")
    meta = {"thresholds": {"Mass": 0.4}, "history": [{"epoch": 0, "loss": 1.0}]}
    ckpt = Checkpoint(state={}, model_config=cfg, preprocess=PreprocessConfig(size=128), class_names=ls.names,
                      labelset_name=ls.name, model_version="2026.01.01+abc", meta=meta)
    path = save_checkpoint(tmp_path / "m.pt", model, ckpt)
    torch.load(path, weights_only=True)  # the format promise: no pickled code
    back = load_checkpoint(path)
    assert back.model_config == cfg and back.class_names == ls.names and back.model_version == "2026.01.01+abc"
    assert back.metadata()["thresholds"] == {"Mass": 0.4}
    x = [torch.rand(3, 128, 128, generator=torch.Generator().manual_seed(1))]
    with torch.no_grad():
        a, b = model(x)[0], back.build_model()(x)[0]
    for k in ("boxes", "scores", "labels"):
        assert torch.equal(a[k], b[k])


def test_not_a_checkpoint(tmp_path):
    p = tmp_path / "x.pt"
    torch.save({"a": torch.zeros(1)}, p)
    with pytest.raises(ValueError, match="not a cxr checkpoint"):
        load_checkpoint(p)


def test_missing_weights_file_gives_clear_error(tmp_path):
    model = build_model(ModelConfig(**TINY))
    with pytest.raises(FileNotFoundError, match="--weights file not found: .*Nothing is downloaded"):
        load_pretrained(model, tmp_path / "resnet50.pth")


def test_imagenet_backbone_file_loads_into_the_body(tmp_path):
    from torchvision.models import resnet18

    path = tmp_path / "resnet18.pth"
    torch.save(resnet18(weights=None).state_dict(), path)
    model = build_model(ModelConfig(**{**TINY, "arch": "fasterrcnn_resnet18_fpn"}))
    report = load_pretrained(model, path)
    assert report["loaded"] >= 100  # every conv/bn tensor of the body; fc has no place
    assert torch.equal(model.backbone.body.conv1.weight, torch.load(path, weights_only=True)["conv1.weight"])


def test_detector_with_other_class_count_reinitialises_the_head(tmp_path):
    src = build_model(ModelConfig(**{**TINY, "num_classes": 15}))
    path = tmp_path / "det.pt"
    torch.save(src.state_dict(), path)
    model = build_model(ModelConfig(**TINY))
    report = load_pretrained(model, path)
    assert any("box_predictor" in k for k in report["skipped_shape_mismatch"])
    assert torch.equal(model.rpn.head.conv[0][0].weight, src.rpn.head.conv[0][0].weight)


def test_weights_for_another_backbone_are_refused(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"something.weight": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="none of its 1 tensors match"):
        load_pretrained(build_model(ModelConfig(**TINY)), path)


def test_augmentation_moves_boxes_with_the_content():
    canvas = np.zeros((128, 128), np.float32)
    canvas[40:80, 30:60] = 1.0
    aug = Augmenter(AugmentConfig(degrees=0, translate=0.1, scale=(0.9, 1.1), brightness=0, contrast=0, noise_std=0, gamma=(1, 1)))
    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        out, boxes, labels = aug(canvas, np.array([[30, 40, 60, 80]], np.float32), np.array([2]), g)
        ys, xs = np.nonzero(out > 0.5)
        x1, y1, x2, y2 = boxes[0]
        assert labels.tolist() == [2]
        assert abs(xs.min() - x1) <= 1.5 and abs(xs.max() + 1 - x2) <= 1.5
        assert abs(ys.min() - y1) <= 1.5 and abs(ys.max() + 1 - y2) <= 1.5


def test_dataset_targets_are_in_the_letterbox_frame(tiny_dataset):
    from cxr.training.annotations import NIHDataset

    ds = NIHDataset.from_dir(tiny_dataset, require_images=True)
    studies = [s for s in ds.detection_studies() if len(s.boxes)]
    data = DetectionDataset(studies, get_labelset("nih-bbox"), PreprocessConfig(size=128))
    images, targets = collate([data[0], data[1]])
    assert images[0].shape == (3, 128, 128)
    np.testing.assert_allclose(targets[0]["boxes"].numpy(), studies[0].boxes * 0.5, rtol=1e-5)  # 256 -> 128


def test_train_and_evaluate_cli_end_to_end(tiny_dataset, tmp_path, capsys):
    run = tmp_path / "run"
    rc = main(["train", "--data", str(tiny_dataset), "--preset", "cpu-demo", "--weights", "none", "--out", str(run), "--epochs", "1",
               "--size", "128", "--batch-size", "4"])
    assert rc == 0 and (run / "best.pt").is_file() and (run / "last.pt").is_file()
    ckpt = load_checkpoint(run / "best.pt")
    assert ckpt.preprocess.size == 128 and len(ckpt.meta["history"]) == 1 and "thresholds" in ckpt.meta
    assert len(ckpt.meta["data_fingerprint"]) == 64
    assert "best checkpoint:" in capsys.readouterr().out

    out = tmp_path / "eval"
    rc = main(["evaluate", "--checkpoint", str(run / "best.pt"), "--data", str(tiny_dataset), "--out", str(out),
               "--bootstrap", "10", "--json"])
    assert rc == 0
    metrics = json.loads(capsys.readouterr().out)
    for key in ("map50", "map40", "map50_95", "froc", "per_class", "image_level"):
        assert key in metrics
    for name in ("metrics.json", "metrics.md", "predictions.csv", "pr_froc.png", "examples.png", "loss_curve.png"):
        assert (out / name).stat().st_size > 0, name
    header = (out / "predictions.csv").read_text().splitlines()[0]
    assert header == "image,label,score,x1,y1,x2,y2"

    # resume continues from the saved epoch
    rc = main(["train", "--data", str(tiny_dataset), "--preset", "cpu-demo", "--weights", "none", "--out", str(run), "--epochs", "2",
               "--size", "128", "--batch-size", "4", "--resume", str(run / "last.pt")])
    assert rc == 0 and len(load_checkpoint(run / "last.pt").meta["history"]) == 2


def test_train_cli_missing_weights_is_a_clear_error(tiny_dataset, tmp_path, capsys):
    rc = main(["train", "--data", str(tiny_dataset), "--preset", "cpu-demo", "--out", str(tmp_path / "r"),
               "--weights", str(tmp_path / "nope.pth"), "--size", "128"])
    assert rc == 2
    assert "--weights file not found" in capsys.readouterr().err


def test_unknown_preset_lists_choices():
    from cxr.training.config import make_config

    with pytest.raises(ValueError, match="cpu-demo, r50-fpn"):
        make_config("huge")
