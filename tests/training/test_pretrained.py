"""Training from torchvision's real ImageNet MobileNetV2 file (fetched into the cache at set-up).

`make test` fetches the file first and sets CXR_REQUIRE_WEIGHTS=1, so in CI these run; a bare
pytest without the cached file skips them, naming the command (see tests/conftest.py)."""

from __future__ import annotations

import pytest
import torch

from cxr.cli import main
from cxr.training.checkpoint import load_checkpoint
from cxr.training.weights import KNOWN

SPEC = KNOWN["mobilenet_v2"]


def test_the_cached_file_is_torchvisions_mobilenet_v2(imagenet_weights):
    from torchvision.models import mobilenet_v2

    assert imagenet_weights.sha256 == SPEC.sha256 and imagenet_weights.path.name == "mobilenet_v2-b0353104.pth"
    state = torch.load(imagenet_weights.path, weights_only=True)
    mobilenet_v2(weights=None).load_state_dict(state, strict=True)  # exactly torchvision's layout
    # trained statistics, not an initialisation: the stem's BatchNorm has learnt its scale
    assert not torch.allclose(state["features.0.1.running_var"], torch.ones(32))


def _train(data, run, *extra):
    rc = main(["train", "--data", str(data), "--preset", "cpu-demo", "--out", str(run), "--epochs", "1", "--size", "128",
               "--batch-size", "4", *extra])
    assert rc == 0
    return load_checkpoint(run / "last.pt")


def _optimised(ckpt) -> int:
    return sum(len(g["params"]) for g in ckpt.train_state["optimizer"]["param_groups"])


def test_cpu_demo_starts_from_imagenet_and_records_which_weights(imagenet_weights, tiny_dataset, tmp_path):
    ckpt = _train(tiny_dataset, tmp_path / "run", "--trainable-backbone-layers", "3")  # the preset's default: imagenet
    w = ckpt.meta["weights"]
    assert w["name"] == "mobilenet_v2" and w["sha256"] == SPEC.sha256 and w["source"] == SPEC.requirement
    assert w["file"] == SPEC.filename and w["loaded"] == 312 and w["mean"] == list(ckpt.preprocess.mean)
    assert ckpt.metadata()["weights"]["sha256"] == SPEC.sha256  # every exported artifact carries it
    # the two frozen stages (stride 2 and 4) are exactly the file's
    file = torch.load(imagenet_weights.path, weights_only=True)
    assert w["frozen"] == ["0", "1", "2", "3"]
    for k in ("0.0.weight", "3.conv.1.0.weight"):
        assert torch.equal(ckpt.state[f"backbone.body.{k}"], file[f"features.{k}"]), k
    assert not torch.equal(ckpt.state["backbone.body.6.conv.0.0.weight"], file["features.6.conv.0.0.weight"])  # trained
    n_params = len(list(ckpt.build_model().parameters()))
    assert _optimised(ckpt) < n_params

    # resuming keeps the same layers frozen (the saved optimizer state holds exactly the others)
    rc = main(["train", "--data", str(tiny_dataset), "--preset", "cpu-demo", "--out", str(tmp_path / "run"), "--epochs", "2",
               "--size", "128", "--batch-size", "4", "--resume", str(tmp_path / "run" / "last.pt")])
    assert rc == 0
    again = load_checkpoint(tmp_path / "run" / "last.pt")
    assert len(again.meta["history"]) == 2 and again.meta["weights"] == w and _optimised(again) == _optimised(ckpt)
    assert torch.equal(again.state["backbone.body.0.0.weight"], file["features.0.0.weight"])


def test_from_scratch_records_none_and_trains_every_layer(tiny_dataset, tmp_path):
    """No cache needed; `--trainable-backbone-layers` must not freeze random layers."""
    ckpt = _train(tiny_dataset, tmp_path / "run", "--weights", "none", "--trainable-backbone-layers", "2")
    assert ckpt.meta["weights"] == {"name": "none"}
    assert _optimised(ckpt) == len(list(ckpt.build_model().parameters()))


def test_backbone_learning_rate_is_its_own_group(imagenet_weights, tiny_dataset, tmp_path):
    ckpt = _train(tiny_dataset, tmp_path / "run", "--backbone-lr-mult", "0.25", "--lr", "1e-3")
    heads, body = ckpt.train_state["optimizer"]["param_groups"]
    assert body["initial_lr"] == pytest.approx(0.25 * heads["initial_lr"]) and heads["initial_lr"] == pytest.approx(1e-3)
