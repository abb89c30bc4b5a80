"""Model factory: torchvision Faster R-CNN variants, built with no downloaded weights.

The models take input already preprocessed by :mod:`cxr.preprocess` (letterboxed to
``S x S`` and normalised), so torchvision's ``GeneralizedRCNNTransform`` is replaced
by :class:`PreprocessedInput`, which only batches.  The ROI head returns the top
``candidates`` raw detections per image without its own NMS; the final per-class NMS
is :func:`cxr.postprocess.postprocess`, exactly as in serving.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from cxr.errors import InvalidFileError, InvalidOptionError, MissingFileError

ARCHITECTURES = (
    "fasterrcnn_resnet50_fpn",  # the product's default (torchvision v1)
    "fasterrcnn_resnet50_fpn_v2",  # torchvision v2: GN heads, better AP, slower
    "fasterrcnn_resnet18_fpn",  # light backbone for CPU demos
    "fasterrcnn_mobilenet_v3_large_fpn",  # lightest; mobile/edge
)


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the network (stored in every checkpoint)."""

    arch: str = "fasterrcnn_resnet50_fpn"
    num_classes: int = 9  # findings + background
    size: int = 512  # S, the fixed letterbox input side
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)  # one per FPN level
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    rpn_pre_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_train: int = 2000
    box_batch_size_per_image: int = 512
    representation_size: int = 1024  # box head MLP width (torchvision's); 256 is ~3x cheaper on CPU
    candidates: int = 300  # raw detections per image handed to postprocess (pre-NMS)
    candidate_score_threshold: float = 0.01  # below this a candidate never matters

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise InvalidOptionError(f"unknown architecture {self.arch!r}; choose one of: {', '.join(ARCHITECTURES)}")
        if self.size % 32:
            raise InvalidOptionError(f"input size must be a multiple of 32 (FPN stride), got {self.size}")
        if self.num_classes < 2:
            raise InvalidOptionError(f"num_classes counts background and must be >= 2, got {self.num_classes}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["anchor_sizes"] = list(self.anchor_sizes)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        d = dict(d)
        if "anchor_sizes" in d:
            d["anchor_sizes"] = tuple(int(a) for a in d["anchor_sizes"])
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


class PreprocessedInput(GeneralizedRCNNTransform):
    """Batches already-preprocessed ``[C, S, S]`` images; no resize, no normalisation.

    Resize and normalisation live in :mod:`cxr.preprocess` so that serving (where
    they run in the Triton preprocess model) and training share one implementation.
    """

    def __init__(self, size: int) -> None:
        super().__init__(min_size=size, max_size=size, image_mean=[0.0], image_std=[1.0], size_divisible=32)
        self.size = size

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        return image

    def resize(self, image, target=None):
        if image.shape[-2:] != (self.size, self.size):
            raise ValueError(f"model expects preprocessed {self.size}x{self.size} input, got {tuple(image.shape[-2:])}")
        return image, target


def _backbone(arch: str, *, trainable_layers: int):
    from torchvision.models.detection.backbone_utils import _mobilenet_extractor, resnet_fpn_backbone
    from torchvision.models import mobilenet_v3_large

    if arch in ("fasterrcnn_resnet50_fpn", "fasterrcnn_resnet18_fpn"):
        name = "resnet50" if arch == "fasterrcnn_resnet50_fpn" else "resnet18"
        # BatchNorm (not torchvision's FrozenBatchNorm): trained from scratch unless a
        # local ImageNet file is loaded; it folds into the convs at export.
        return resnet_fpn_backbone(backbone_name=name, weights=None, norm_layer=nn.BatchNorm2d, trainable_layers=trainable_layers)
    if arch == "fasterrcnn_mobilenet_v3_large_fpn":
        net = mobilenet_v3_large(weights=None, norm_layer=nn.BatchNorm2d)
        return _mobilenet_extractor(net, True, trainable_layers)
    raise AssertionError(arch)


def build_model(config: ModelConfig, *, trainable_backbone_layers: int = 5) -> FasterRCNN:
    """A Faster R-CNN for ``config`` with random weights (``weights=None`` always)."""
    common = dict(
        min_size=config.size,
        max_size=config.size,
        rpn_pre_nms_top_n_test=config.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_test=config.rpn_post_nms_top_n_test,
        rpn_pre_nms_top_n_train=config.rpn_pre_nms_top_n_train,
        rpn_post_nms_top_n_train=config.rpn_post_nms_top_n_train,
        box_batch_size_per_image=config.box_batch_size_per_image,
        box_score_thresh=config.candidate_score_threshold,
        box_nms_thresh=1.0,  # no NMS in the model: cxr.postprocess does it, as in serving
        box_detections_per_img=config.candidates,
    )
    if config.arch == "fasterrcnn_resnet50_fpn_v2":
        from torchvision.models.detection import fasterrcnn_resnet50_fpn_v2

        model = fasterrcnn_resnet50_fpn_v2(
            weights=None, weights_backbone=None, num_classes=config.num_classes,
            trainable_backbone_layers=trainable_backbone_layers, **common,
        )
        model.rpn.anchor_generator = _anchors(config.anchor_sizes, levels=5)  # same 3 anchors per cell
    else:
        backbone = _backbone(config.arch, trainable_layers=trainable_backbone_layers)
        levels = 3 if "mobilenet" in config.arch else 5
        from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead

        rep = config.representation_size
        model = FasterRCNN(
            backbone, rpn_anchor_generator=_anchors(config.anchor_sizes, levels=levels),
            box_head=TwoMLPHead(backbone.out_channels * 7 * 7, rep),  # 7x7 = MultiScaleRoIAlign output
            box_predictor=FastRCNNPredictor(rep, config.num_classes), **common,
        )
    model.transform = PreprocessedInput(config.size)
    return model


def _anchors(sizes: tuple[int, ...], *, levels: int) -> AnchorGenerator:
    if levels == len(sizes):
        per_level = tuple((s,) for s in sizes)
    else:  # MobileNet's 3 maps each see every size, as in torchvision's own factory
        per_level = (tuple(sizes),) * levels
    return AnchorGenerator(per_level, ((0.5, 1.0, 2.0),) * levels)


def load_pretrained(model: FasterRCNN, path: str | Path) -> dict:
    """Load a local weights file into ``model`` for transfer learning.

    Accepts a torchvision ImageNet classification state dict (ResNet/MobileNet: goes
    into the backbone body), a torchvision detection state dict (COCO), or a cxr
    checkpoint.  Tensors whose shapes differ (the class head when class counts
    differ) are skipped and stay freshly initialised.  Returns a report of what was
    loaded; raises with a clear message if the file is missing or nothing matches.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(
            f"--weights file not found: {path}. Nothing is downloaded at run time; pass a local file "
            "(an ImageNet backbone such as resnet50-*.pth, or a torchvision/cxr detector checkpoint)"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InvalidFileError(f"--weights {path} is not a PyTorch weights file readable with weights_only=True: {exc}") from exc
    state = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InvalidFileError(f"--weights {path} does not hold a state dict of tensors")

    own, n_file = model.state_dict(), len(state)
    if not any(k.startswith(("backbone.", "rpn.", "roi_heads.")) for k in state):
        # A classification network: its layers are the detector's backbone body.
        # (MobileNet's body is its "features" sequence, so that prefix goes.)
        prefix = "backbone.body."
        state = {
            prefix + name: v
            for k, v in state.items()
            for name in {k, k.removeprefix("features.")}
            if prefix + name in own
        }
    loaded = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(k for k, v in state.items() if k in own and own[k].shape != v.shape)
    if not loaded:
        raise InvalidFileError(
            f"--weights {path}: none of its {n_file} tensors match the {len(own)} of this architecture; "
            "is it for a different backbone?"
        )
    model.load_state_dict(loaded, strict=False)
    return {"file": str(path), "loaded": len(loaded), "of": len(own), "skipped_shape_mismatch": skipped}
