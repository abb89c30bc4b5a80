"""The model factory's FPN levels, anchors, freezing and pretrained loading (issue 14's two causes)."""

from __future__ import annotations

import hashlib

import pytest
import torch

from cxr.errors import InvalidFileError, InvalidOptionError
from cxr.training.model import (
    ARCHITECTURES, FPN_LEVELS, ModelConfig, backbone_stages, build_model, freeze_backbone, load_pretrained,
)

SMALL = dict(size=128, representation_size=32, rpn_pre_nms_top_n_test=50, rpn_post_nms_top_n_test=20)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_architecture_has_fpn_levels_at_stride_8_16_32(arch):
    """A ~15 px nodule needs a fine level: torchvision's MobileNet FPN had only stride 32 (and 64)."""
    model = build_model(ModelConfig(arch=arch, **SMALL)).eval()
    with torch.no_grad():
        feats = model.backbone(torch.zeros(1, 3, 128, 128))
    strides = [128 // f.shape[-1] for f in feats.values()]
    assert len(strides) == FPN_LEVELS and strides == sorted(strides) and len(set(strides)) == FPN_LEVELS, strides
    assert {8, 16, 32} <= set(strides) and strides[0] <= 8
    # ROI pooling reads the levels at strides <= 32 (several levels: the serving graph's scatter path)
    pooled = [k for k in feats if k in model.roi_heads.box_roi_pool.featmap_names]
    assert [128 // feats[k].shape[-1] for k in pooled][-3:] == [8, 16, 32]


def test_anchors_follow_the_levels_finest_first():
    model = build_model(ModelConfig(arch="fasterrcnn_mobilenet_v2_fpn", anchor_sizes=(12, 24, 48, 96, 192), **SMALL))
    assert model.rpn.anchor_generator.sizes == ((12,), (24,), (48,), (96,), (192,))
    two = build_model(ModelConfig(arch="fasterrcnn_mobilenet_v2_fpn", anchor_sizes=tuple(range(8, 88, 8)), **SMALL))
    assert two.rpn.anchor_generator.sizes[0] == (8, 16) and two.rpn.head.cls_logits.out_channels == 6
    with pytest.raises(InvalidOptionError, match="7 sizes do not split evenly over the 5 FPN levels"):
        ModelConfig(arch="fasterrcnn_mobilenet_v2_fpn", anchor_sizes=tuple(range(1, 8)))


def test_a_mobilenet_checkpoint_of_the_old_topology_is_refused_with_the_fix():
    old = ModelConfig(arch="fasterrcnn_resnet18_fpn").to_dict()
    del old["topology"]  # written before the field existed
    assert ModelConfig.from_dict(old).arch == "fasterrcnn_resnet18_fpn"  # ResNets did not change
    old["arch"] = "fasterrcnn_mobilenet_v3_large_fpn"
    with pytest.raises(InvalidOptionError, match="topology 1 .*two stride-32 maps.*retrain"):
        ModelConfig.from_dict(old)


@pytest.mark.parametrize("arch", ["fasterrcnn_mobilenet_v2_fpn", "fasterrcnn_resnet18_fpn"])
def test_a_new_model_trains_every_layer_and_freezing_counts_stages(arch):
    model = build_model(ModelConfig(arch=arch, **SMALL))
    assert all(p.requires_grad for p in model.parameters()), "no frozen layers over random weights"
    stages = backbone_stages(model)
    assert len(stages) == 5
    frozen = freeze_backbone(model, 3)
    assert frozen == stages[0] + stages[1]
    body = model.backbone.body
    assert not any(p.requires_grad for n in frozen for p in getattr(body, n).parameters())
    assert all(p.requires_grad for n in stages[2] for p in getattr(body, n).parameters())
    with pytest.raises(InvalidOptionError, match="0..5"):
        freeze_backbone(model, 6)


def _named_like_torchvision(tmp_path, stem, state):
    raw = tmp_path / "raw.pth"
    torch.save(state, raw)
    path = tmp_path / f"{stem}-{hashlib.sha256(raw.read_bytes()).hexdigest()[:8]}.pth"
    raw.rename(path)
    return path


@pytest.fixture(scope="module")
def resnet50_file(tmp_path_factory):
    """A file of exactly torchvision's resnet50-*.pth layout: a ResNet-50's state dict, keys and shapes."""
    from torchvision.models import resnet50

    torch.manual_seed(0)
    return _named_like_torchvision(tmp_path_factory.mktemp("r50"), "resnet50", resnet50(weights=None).state_dict())


@pytest.mark.parametrize("arch", ["fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2"])
def test_resnet50_imagenet_layout_fills_the_whole_backbone(resnet50_file, arch):
    from cxr.training.weights import resolve

    resolved = resolve(str(resnet50_file), arch=arch)  # the name's hash prefix checks out
    model = build_model(ModelConfig(arch=arch, **SMALL))
    report = load_pretrained(model, resolved.path, arch=arch)
    file = torch.load(resnet50_file, weights_only=True)
    own = model.state_dict()
    body = [k for k in own if k.startswith("backbone.body.")]
    assert report["loaded"] == len(body) == len(file) - 2  # everything but fc.weight / fc.bias
    for k in body:
        assert torch.equal(own[k], file[k.removeprefix("backbone.body.")]), k


def test_a_classification_file_of_another_resnet_is_refused_naming_the_right_one(tmp_path):
    from torchvision.models import resnet18

    path = tmp_path / "resnet18.pth"
    torch.save(resnet18(weights=None).state_dict(), path)
    model = build_model(ModelConfig(arch="fasterrcnn_resnet50_fpn", **SMALL))
    with pytest.raises(InvalidFileError, match=r"is for another architecture: it fills \d+ of the \d+ backbone tensors .*"
                                              r"other shapes \(e.g. layer1.0.conv1.weight: \[64, 64, 3, 3\] in the file, \[64, 64, 1, 1\] here\)"
                                              r".*resnet50-0676ba61.pth"):
        load_pretrained(model, path, arch="fasterrcnn_resnet50_fpn")


def test_a_mobilenet_v3_file_is_refused_by_the_mobilenet_v2_detector(tmp_path):
    from torchvision.models import mobilenet_v3_large

    path = tmp_path / "mnv3.pth"
    torch.save(mobilenet_v3_large(weights=None).state_dict(), path)
    with pytest.raises(InvalidFileError, match=r"(another architecture|none of its).*mobilenet_v2-b0353104.pth"):
        load_pretrained(build_model(ModelConfig(arch="fasterrcnn_mobilenet_v2_fpn", **SMALL)), path, arch="fasterrcnn_mobilenet_v2_fpn")


def test_a_truncated_weights_file_says_so(resnet50_file, tmp_path):
    cut = tmp_path / "resnet50-cut.pth"
    cut.write_bytes(resnet50_file.read_bytes()[:100_000])
    with pytest.raises(InvalidFileError, match=r"not a PyTorch weights file .*truncated or corrupt\? 100,000 bytes"):
        load_pretrained(build_model(ModelConfig(arch="fasterrcnn_resnet50_fpn", **SMALL)), cut)


def test_r50_fpn_trains_from_a_torchvision_resnet50_file_and_records_it(resnet50_file, tmp_path_factory):
    """`--preset r50-fpn --weights resnet50-*.pth`: the stem and layer1 stay the file's (3 trainable stages)."""
    from cxr.cli import main
    from cxr.training.checkpoint import load_checkpoint
    from cxr.training.synth import SynthConfig, generate

    data = generate(tmp_path_factory.mktemp("r50data") / "d", SynthConfig(images=10, seed=2, size=256), progress=False)
    run = tmp_path_factory.mktemp("r50run")
    rc = main(["train", "--data", str(data), "--preset", "r50-fpn", "--weights", str(resnet50_file), "--out", str(run),
               "--epochs", "1", "--size", "128", "--batch-size", "2", "--device", "cpu"])
    assert rc == 0
    ckpt = load_checkpoint(run / "best.pt")
    w = ckpt.meta["weights"]
    assert w["file"] == resnet50_file.name and w["source"] == "local file" and w["loaded"] == 318
    assert w["frozen"] == ["conv1", "bn1", "relu", "maxpool", "layer1"]
    file = torch.load(resnet50_file, weights_only=True)
    assert torch.equal(ckpt.state["backbone.body.layer1.0.conv1.weight"], file["layer1.0.conv1.weight"])
    assert not torch.equal(ckpt.state["backbone.body.layer4.0.conv1.weight"], file["layer4.0.conv1.weight"])
