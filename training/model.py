"""Model factory: torchvision Faster R-CNN and Mask R-CNN variants, built with no downloaded weights.

The models take input already preprocessed by :mod:`cxr.preprocess` (letterboxed to
``S x S`` and normalised), so torchvision's ``GeneralizedRCNNTransform`` is replaced
by :class:`PreprocessedInput`, which only batches.  The ROI head returns the top
``candidates`` raw detections per image without its own NMS; the final per-class NMS
is :func:`cxr.postprocess.postprocess`, exactly as in serving.

Every architecture has five FPN levels, the finest at stride 8 or finer: ResNets at
strides 4-64 (torchvision's), MobileNets at strides 8, 16, 32 from the backbone plus
two subsampled levels (64, 128).  torchvision's own MobileNet FPN feeds both of its
backbone levels from stride 32, which leaves a 15 px nodule at 256 px no feature map
that can see it (issue 14).  ``anchor_sizes`` are one size per level (or a multiple
of five, split evenly), finest level first.

A Mask R-CNN (``maskrcnn_*``, the ``segment`` task) is its detector twin (``fasterrcnn_*``:
same backbone, FPN, anchors, RPN and box head) plus torchvision's mask branch: an ROI
pooler on the box pooler's FPN levels (14 x 14), a head of 3 x 3 convolutions and a
predictor of one ``28 x 28`` mask per class.  In eval mode it returns, per detection,
``masks`` ``[K, 1, 28, 28]`` probabilities of the detection's class over its box in the
letterbox frame; pasting them into the image is :func:`cxr.masks.paste_in_original`.

Pretrained weights (:mod:`cxr.training.weights`) go in with :func:`load_pretrained`; only over
them does :func:`freeze_backbone` freeze early stages -- frozen random layers stay
random for the whole run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock

from cxr.errors import InvalidFileError, InvalidOptionError, MissingFileError

ARCHITECTURES = (
    "fasterrcnn_resnet50_fpn",  # the product's default (torchvision v1)
    "fasterrcnn_resnet50_fpn_v2",  # torchvision v2: GN heads, better AP, slower
    "fasterrcnn_resnet18_fpn",  # light backbone for CPU demos
    "fasterrcnn_mobilenet_v3_large_fpn",  # lightest; mobile/edge
    "fasterrcnn_mobilenet_v2_fpn",  # the CPU demo: torchvision's ImageNet file ships in a registry package
    "maskrcnn_resnet50_fpn",  # torchvision's Mask R-CNN (the segment task's GPU model)
    "maskrcnn_mobilenet_v2_fpn",  # the segment task's CPU demo, on the CPU demo detector's backbone
)
# Each Mask R-CNN and the detector whose backbone, FPN, RPN and box head it shares: ImageNet
# weights initialise a backbone, so a mask model takes its twin's (`cxr weights`).
DETECTOR_TWIN = {"maskrcnn_resnet50_fpn": "fasterrcnn_resnet50_fpn", "maskrcnn_mobilenet_v2_fpn": "fasterrcnn_mobilenet_v2_fpn"}
TASKS = ("detect", "segment")  # boxes; boxes and instance masks (a maskrcnn_* architecture)
MASK_POOL, MASK_SIZE = 14, 28  # torchvision's: ROI features 14 x 14, masks 28 x 28 (one transposed conv)
# FPN levels the ROI poolers read (torchvision's default names; ROIAlign takes those present):
# strides 4-32 on a ResNet, 8-32 on a MobileNet, whose coarser levels are "pool", "pool1".
ROI_LEVELS = ("0", "1", "2", "3")
FPN_LEVELS = 5  # every architecture (see the module docstring)
MOBILENET_STRIDES = (8, 16, 32)  # the backbone stages a MobileNet FPN reads
# Revision of the networks this factory builds.  2: MobileNet FPNs at strides 8-128 (issue 14);
# 1: torchvision's MobileNet FPN on two stride-32 maps.  ResNets are the same in both.
TOPOLOGY = 2


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the network (stored in every checkpoint)."""

    arch: str = "fasterrcnn_resnet50_fpn"
    num_classes: int = 9  # findings + background
    size: int = 512  # S, the fixed letterbox input side
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)  # per FPN level, finest first
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    rpn_pre_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_train: int = 2000
    box_batch_size_per_image: int = 512
    representation_size: int = 1024  # box head MLP width (torchvision's); 256 is ~3x cheaper on CPU
    fpn_channels: int = 256  # torchvision's; a MobileNet FPN at stride 8 costs more than its backbone at 256
    candidates: int = 300  # raw detections per image handed to postprocess (pre-NMS)
    candidate_score_threshold: float = 0.01  # below this a candidate never matters
    mask_head_channels: int = 256  # Mask R-CNN only: width of the mask head's convolutions (torchvision's)
    mask_head_layers: int = 4  # Mask R-CNN only: 3 x 3 convolutions before the 2x up-convolution (torchvision's)
    topology: int = TOPOLOGY

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise InvalidOptionError(f"unknown architecture {self.arch!r}; choose one of: {', '.join(ARCHITECTURES)}")
        if self.size % 32:
            raise InvalidOptionError(f"input size must be a multiple of 32 (FPN stride), got {self.size}")
        if self.num_classes < 2:
            raise InvalidOptionError(f"num_classes counts background and must be >= 2, got {self.num_classes}")
        if not self.anchor_sizes or len(self.anchor_sizes) % FPN_LEVELS:
            raise InvalidOptionError(
                f"anchor_sizes: {len(self.anchor_sizes)} sizes do not split evenly over the {FPN_LEVELS} FPN levels; "
                f"give {FPN_LEVELS} (one per level, finest first) or a multiple of {FPN_LEVELS}")
        if self.mask_head_channels < 1 or self.mask_head_layers < 1:
            raise InvalidOptionError(f"the mask head needs at least one layer of one channel, got {self.mask_head_layers} "
                                     f"layers of {self.mask_head_channels}")
        if self.topology != TOPOLOGY and "mobilenet" in self.arch:
            raise InvalidOptionError(
                f"{self.arch} of model-factory topology {self.topology} (FPN on two stride-32 maps) is no longer built; "
                f"this cxr builds topology {TOPOLOGY} (FPN levels at strides 8-128): retrain the model with this cxr")

    @property
    def task(self) -> str:
        """``segment`` for a Mask R-CNN (boxes and instance masks), else ``detect``."""
        return "segment" if self.arch in DETECTOR_TWIN else "detect"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["anchor_sizes"] = list(self.anchor_sizes)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        d = dict(d)
        if "anchor_sizes" in d:
            d["anchor_sizes"] = tuple(int(a) for a in d["anchor_sizes"])
        d.setdefault("topology", 1)  # written before the field existed
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

    def postprocess(self, result, image_shapes, original_image_sizes):
        """Detections stay in the letterbox frame (the input is never resized, so torchvision's
        box rescale is a factor of 1) and masks stay the mask head's ``[K, 1, 28, 28]``:
        un-letterboxing and pasting are :mod:`cxr.postprocess` and :mod:`cxr.masks`, as in serving."""
        return result


class SubsampledLevels(ExtraFPNBlock):
    """``n`` coarser FPN levels, each the previous one subsampled by 2 (torchvision's
    ``LastLevelMaxPool``, repeated): big findings get anchors on a coarse grid at no
    parameter cost."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def forward(self, results, x, names):
        for i in range(self.n):
            names.append(f"pool{i}" if i else "pool")
            results.append(F.max_pool2d(results[-1], kernel_size=1, stride=2, padding=0))
        return results, names


def _stage_outputs(features: nn.Sequential, strides: tuple[int, ...]) -> dict[str, int]:
    """Index of the last block of ``features`` at each output stride -> its channels."""
    probe = 2 * max(strides)
    x, found = torch.zeros(1, 3, probe, probe), {}
    with torch.no_grad():
        was_training = features.training
        features.eval()
        for i, block in enumerate(features):
            x = block(x)
            stride = probe // x.shape[-1]
            if stride in strides:
                found[stride] = (str(i), x.shape[1])  # later blocks of the same stride replace earlier ones
        features.train(was_training)
    return dict(found[s] for s in strides)


def _backbone(arch: str, fpn_channels: int):
    from torchvision.models import mobilenet_v2, mobilenet_v3_large
    from torchvision.models.detection.backbone_utils import BackboneWithFPN, resnet_fpn_backbone
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    arch = DETECTOR_TWIN.get(arch, arch)
    if arch in ("fasterrcnn_resnet50_fpn", "fasterrcnn_resnet18_fpn"):
        name = "resnet50" if arch == "fasterrcnn_resnet50_fpn" else "resnet18"
        # BatchNorm (not torchvision's FrozenBatchNorm): it trains from scratch, adapts
        # ImageNet statistics to radiographs, and folds into the convs at export.
        # trainable_layers=5: nothing frozen here; freeze_backbone() decides after weights load.
        bb = resnet_fpn_backbone(backbone_name=name, weights=None, norm_layer=nn.BatchNorm2d, trainable_layers=5,
                                 extra_blocks=LastLevelMaxPool())
        if fpn_channels != bb.out_channels:
            raise InvalidOptionError(f"{arch} keeps torchvision's {bb.out_channels} FPN channels, got fpn_channels={fpn_channels}")
        return bb
    net = {"fasterrcnn_mobilenet_v3_large_fpn": mobilenet_v3_large,
           "fasterrcnn_mobilenet_v2_fpn": mobilenet_v2}[arch](weights=None, norm_layer=nn.BatchNorm2d)
    stages = _stage_outputs(net.features, MOBILENET_STRIDES)
    return BackboneWithFPN(net.features, {idx: str(level) for level, idx in enumerate(stages)}, list(stages.values()),
                           fpn_channels, extra_blocks=SubsampledLevels(FPN_LEVELS - len(stages)))


def arch_for_task(arch: str, task: str) -> str:
    """The architecture that does ``task`` on ``arch``'s backbone: ``segment`` turns a detector into its
    Mask R-CNN twin; a Mask R-CNN asked to ``detect`` is refused (it would train masks it has no targets for)."""
    if task not in TASKS:
        raise InvalidOptionError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")
    twins = {det: mask for mask, det in DETECTOR_TWIN.items()}
    if task == "segment" and arch not in DETECTOR_TWIN:
        if arch not in twins:
            raise InvalidOptionError(f"--task segment needs a Mask R-CNN and {arch} has none; choose --arch "
                                     f"{' or '.join(DETECTOR_TWIN)} (or their detectors {', '.join(twins)})")
        return twins[arch]
    if task == "detect" and arch in DETECTOR_TWIN:
        raise InvalidOptionError(f"{arch} is a Mask R-CNN: pass --task segment, or --arch {DETECTOR_TWIN[arch]} to detect")
    return arch


def build_model(config: ModelConfig) -> FasterRCNN:
    """A Faster R-CNN (or, for a ``maskrcnn_*`` arch, a Mask R-CNN) for ``config`` with random weights
    (``weights=None`` always), every layer trainable."""
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
            weights=None, weights_backbone=None, num_classes=config.num_classes, trainable_backbone_layers=5, **common,
        )
        model.rpn.anchor_generator = _anchors(config.anchor_sizes)  # same 3 anchors per cell
    else:
        from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead

        backbone = _backbone(config.arch, config.fpn_channels)
        rep = config.representation_size
        heads = dict(rpn_anchor_generator=_anchors(config.anchor_sizes),
                     box_roi_pool=MultiScaleRoIAlign(featmap_names=list(ROI_LEVELS), output_size=7, sampling_ratio=2),
                     box_head=TwoMLPHead(backbone.out_channels * 7 * 7, rep),  # 7x7 = MultiScaleRoIAlign output
                     box_predictor=FastRCNNPredictor(rep, config.num_classes))
        if config.task == "segment":
            model = MaskRCNN(backbone, **heads, **common, **_mask_branch(config, backbone.out_channels))
        else:
            model = FasterRCNN(backbone, **heads, **common)
    model.transform = PreprocessedInput(config.size)
    return model


def _mask_branch(config: ModelConfig, in_channels: int) -> dict:
    """torchvision's mask branch, its ROI pooler on the box pooler's FPN levels (:data:`ROI_LEVELS`),
    so the mask head sees what the box head saw."""
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

    width = config.mask_head_channels
    return dict(mask_roi_pool=MultiScaleRoIAlign(featmap_names=list(ROI_LEVELS), output_size=MASK_POOL, sampling_ratio=2),
                mask_head=MaskRCNNHeads(in_channels, (width,) * config.mask_head_layers, 1),
                mask_predictor=MaskRCNNPredictor(width, width, config.num_classes))


def _anchors(sizes: tuple[int, ...]) -> AnchorGenerator:
    k = len(sizes) // FPN_LEVELS
    per_level = tuple(tuple(sizes[i * k : (i + 1) * k]) for i in range(FPN_LEVELS))
    return AnchorGenerator(per_level, ((0.5, 1.0, 2.0),) * FPN_LEVELS)


def backbone_stages(model: FasterRCNN) -> list[list[str]]:
    """The backbone body's top-level modules grouped by output stride (stem at stride 2 first).

    Five stages for every architecture: ResNet's conv1 / layer1..4, MobileNet's blocks
    up to strides 2, 4, 8, 16, 32 -- the unit torchvision's ``trainable_backbone_layers`` counts.
    """
    body = model.backbone.body
    x, probe, stages, last = torch.zeros(1, 3, 64, 64), 64, [], None
    was_training = body.training
    body.eval()
    with torch.no_grad():
        for name, module in body.named_children():
            x = module(x)
            stride = probe // x.shape[-1]
            if stride != last:
                stages.append([])
            stages[-1].append(name)
            last = stride
    body.train(was_training)
    return stages


def freeze_backbone(model: FasterRCNN, trainable_layers: int) -> list[str]:
    """Freeze all but the last ``trainable_layers`` (0-5) backbone stages; returns the frozen modules.

    Only over pretrained weights: a frozen random layer stays random for the whole run.
    BatchNorm statistics of frozen stages still follow the data (ImageNet's do not fit
    radiographs; FrozenBatchNorm with AdamW 2e-3 diverged in issue 14's experiment).
    """
    stages = backbone_stages(model)
    if not 0 <= trainable_layers <= len(stages):
        raise InvalidOptionError(f"trainable backbone layers must be in 0..{len(stages)}, got {trainable_layers}")
    frozen = [name for stage in stages[: len(stages) - trainable_layers] for name in stage]
    freeze_modules(model, frozen)
    return frozen


def freeze_modules(model: FasterRCNN, names: list[str]) -> None:
    """Freeze these top-level modules of the backbone body (as recorded in a checkpoint: a resumed
    run must optimise exactly the parameters its saved optimizer state holds)."""
    for name in names:
        getattr(model.backbone.body, name).requires_grad_(False)


def load_pretrained(model: FasterRCNN, path: str | Path, *, arch: str | None = None) -> dict:
    """Load a local weights file into ``model`` for transfer learning.

    Accepts a torchvision ImageNet classification state dict (ResNet/MobileNet: goes
    into the backbone body, which it must fill entirely), a torchvision detection state
    dict (COCO), or a cxr checkpoint; of a detector only the class head may differ in
    shape (other class counts: it stays freshly initialised).  Returns a report of what
    was loaded; raises with a clear message if the file is missing, unreadable or for
    another architecture.
    """
    from cxr.training.weights import TORCHVISION_FILES

    path = Path(path)
    takes = TORCHVISION_FILES.get(arch or "", "torchvision's ImageNet file for its backbone")
    if not path.is_file():
        raise MissingFileError(
            f"--weights file not found: {path}. Nothing is downloaded at run time; pass a local file "
            "(an ImageNet backbone such as resnet50-*.pth, or a torchvision/cxr detector checkpoint)"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InvalidFileError(f"--weights {path} is not a PyTorch weights file readable with weights_only=True "
                               f"(truncated or corrupt? {path.stat().st_size:,} bytes): {exc}") from exc
    state = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InvalidFileError(f"--weights {path} does not hold a state dict of tensors")

    own, n_file = model.state_dict(), len(state)
    classifier = not any(k.startswith(("backbone.", "rpn.", "roi_heads.")) for k in state)
    if classifier:
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
            f"is it for a different backbone? {arch or 'this model'} takes {takes}"
        )
    body = [k for k in own if k.startswith("backbone.body.")]
    missing_body = [k for k in body if k not in loaded]
    wrong = skipped if not classifier else []
    class_heads = ("roi_heads.box_predictor.", "roi_heads.mask_predictor.mask_fcn_logits.")
    wrong = [k for k in wrong if not k.startswith(class_heads)]  # another class count: re-initialised
    if (classifier and missing_body) or wrong:
        bad = (skipped or missing_body or wrong)[0]
        shapes = f": {list(state[bad].shape)} in the file, {list(own[bad].shape)} here" if bad in state else " is not in the file"
        raise InvalidFileError(
            f"--weights {path} is for another architecture: it fills {len(loaded)} of the {len(body)} backbone tensors "
            f"of {arch or 'this model'}, {len(skipped)} with other shapes (e.g. {bad.removeprefix('backbone.body.')}{shapes}). "
            f"{arch or 'This model'} takes {takes}; `cxr weights list` shows the files cxr fetches")
    model.load_state_dict(loaded, strict=False)
    return {"file": str(path), "loaded": len(loaded), "of": len(own), "skipped_shape_mismatch": skipped}
