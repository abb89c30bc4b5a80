"""The serving graph: a batch-vectorised re-statement of a trained Faster R-CNN.

torchvision's detector loops over the images of a batch in Python (RPN NMS, ROI
pooling of per-image proposal lists, per-image postprocessing).  Traced for ONNX,
those loops unroll into the batch size used at export, so a "dynamic batch" graph
silently computes only the first images (vision #8937).  :class:`ServingGraph`
computes the same thing with batched tensor ops only:

- anchors are a constant (the input is always ``S x S``);
- RPN proposals per level by ``topk`` on ``[B, A]``; NMS per image and level with
  ONNX ``NonMaxSuppression`` (batched natively; TensorRT's INMSLayer), levels kept
  apart by the coordinate-offset trick, padded to ``post_nms_top_n`` per image;
- multi-scale ROI Align on ``[B * N, 5]`` ROIs, each pooled on its own level only;
- the box head, then the top ``K`` (label, score, box) candidates per image.

Input ``images``: float32 ``[B, C, S, S]`` (already preprocessed by ``cxr``).
Outputs: ``boxes`` float32 ``[B, K, 4]`` xyxy in the ``S x S`` frame, ``scores``
float32 ``[B, K]`` (descending), ``labels`` int64 ``[B, K]`` (1-based), ``valid``
int64 ``[B]`` (rows ``[:valid]`` are candidates, the rest padding).  Final NMS is
:func:`cxr.postprocess.postprocess`.

A Mask R-CNN (the segment task) adds ``masks`` float32 ``[B, K, M, M]`` (M = 28): each
candidate's mask probabilities for its own class over its box, as torchvision's
``maskrcnn_inference`` returns them (the mask branch pools the K candidate boxes on the box
pooler's levels, 14 x 14, then head, predictor, sigmoid).  Pasting into the image is NOT in
the graph (MMDeploy's, detectron2's and NVIDIA's choice): :func:`cxr.masks.paste_in_original`
does it after NMS, for the kept rows only.  Zero detections cannot reach the mask head with
zero ROIs (the crash of torchvision's own exported masks): the graph always pools exactly K
rows per image, padding included, and ``valid`` says which count.  The eager forward gives the same candidates
as the torchvision model it wraps (tested), so PyTorch parity holds by construction.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import boxes as box_ops

OPSET = 17  # RoiAlign with coordinate_transformation_mode needs >= 16


class _BatchedNMS(torch.autograd.Function):
    """Per-image NMS with ONNX ``NonMaxSuppression`` semantics.

    boxes ``[B, M, 4]``, scores ``[B, M]`` -> selected ``[num, 3]`` rows of
    (image, 0, box index), each image's rows in descending score order.
    """

    @staticmethod
    def forward(ctx, boxes, scores, max_per_image: int, iou_threshold: float, score_threshold: float):
        rows = []
        for b in range(boxes.shape[0]):
            cand = torch.nonzero(scores[b] > score_threshold).flatten()
            keep = cand[box_ops.nms(boxes[b, cand], scores[b, cand], iou_threshold)][:max_per_image]
            rows.append(torch.stack([torch.full_like(keep, b), torch.zeros_like(keep), keep], 1))
        return torch.cat(rows) if rows else boxes.new_zeros((0, 3), dtype=torch.int64)

    @staticmethod
    def symbolic(g, boxes, scores, max_per_image, iou_threshold, score_threshold):
        return g.op(
            "NonMaxSuppression",
            boxes,
            g.op("Unsqueeze", scores, g.op("Constant", value_t=torch.tensor([1]))),
            g.op("Constant", value_t=torch.tensor([max_per_image], dtype=torch.int64)),
            g.op("Constant", value_t=torch.tensor([iou_threshold], dtype=torch.float32)),
            g.op("Constant", value_t=torch.tensor([score_threshold], dtype=torch.float32)),
        )


def _pad_selected(selected: torch.Tensor, batch: torch.Tensor, per_image: int) -> tuple[torch.Tensor, torch.Tensor]:
    """NMS rows -> ``[B, per_image]`` box indices and a validity mask (left-aligned)."""
    img, idx = selected[:, 0], selected[:, 2]
    onehot = (img[None, :] == torch.arange(batch, device=img.device)[:, None]).to(torch.int64)  # [B, num]
    counts = onehot.sum(1)
    start = torch.cumsum(counts, 0) - counts
    rank = torch.arange(img.shape[0], device=img.device) - start[img]
    flat = img * per_image + rank
    index = torch.zeros(batch * per_image, dtype=torch.int64, device=img.device).scatter(0, flat, idx)
    valid = torch.zeros(batch * per_image, dtype=torch.bool, device=img.device).scatter(0, flat, torch.ones_like(idx, dtype=torch.bool))
    return index.reshape(-1, per_image), valid.reshape(-1, per_image)


class ServingGraph(nn.Module):
    """Batched serving graph of a torchvision ``FasterRCNN`` built by ``cxr.training.model``."""

    def __init__(self, model: torchvision.models.detection.FasterRCNN, size: int, *, candidates: int | None = None) -> None:
        super().__init__()
        model = model.eval()
        self.size = int(size)
        self.backbone = model.backbone
        self.rpn_head = model.rpn.head
        self.rpn_coder = model.rpn.box_coder
        self.roi_heads = model.roi_heads
        self.pre_nms_top_n = int(model.rpn._pre_nms_top_n["testing"])
        self.post_nms_top_n = int(model.rpn._post_nms_top_n["testing"])
        self.rpn_nms_thresh = float(model.rpn.nms_thresh)
        self.rpn_min_size = float(model.rpn.min_size)
        self.rpn_score_thresh = float(model.rpn.score_thresh)
        self.score_thresh = float(model.roi_heads.score_thresh)
        self.candidates = int(candidates or model.roi_heads.detections_per_img)

        # Anchors, per-level anchor counts and ROI pooling scales depend only on S:
        # compute them once with a dummy image and keep them as constants.
        with torch.no_grad():
            dummy = torch.zeros(1, 3, size, size)
            feats = self.backbone(dummy)
            image_list = ImageList(dummy, [(size, size)])
            anchors = model.rpn.anchor_generator(image_list, list(feats.values()))[0]
            self.register_buffer("anchors", anchors, persistent=False)
            self.anchors_per_level = [int(o[0].numel()) for o in self.rpn_head(list(feats.values()))[0]]
            from torchvision.ops.poolers import _setup_scales

            pooler = model.roi_heads.box_roi_pool
            self.pool_names = [k for k in feats if k in pooler.featmap_names]  # the pooler's own order
            scales, self.mapper = _setup_scales(
                [feats[k] for k in self.pool_names], [(size, size)], pooler.canonical_scale, pooler.canonical_level
            )
            self.pool_scales = [float(s) for s in scales]
            self.pool_output = pooler.output_size
            self.sampling_ratio = pooler.sampling_ratio
        mask_pool = getattr(model.roi_heads, "mask_roi_pool", None)
        self.has_masks = mask_pool is not None
        if self.has_masks:
            if list(mask_pool.featmap_names) != list(pooler.featmap_names):
                raise ValueError(f"the mask pooler reads levels {mask_pool.featmap_names}, the box pooler "
                                 f"{pooler.featmap_names}: the serving graph pools both on the same levels")
            self.mask_pool_output = mask_pool.output_size
            self.mask_sampling_ratio = mask_pool.sampling_ratio
            with torch.no_grad():  # M, a constant of the graph (a traced shape would leave M symbolic in ONNX)
                probe = torch.zeros(1, model.backbone.out_channels, *mask_pool.output_size)
                self.mask_size = int(model.roi_heads.mask_predictor(model.roi_heads.mask_head(probe)).shape[-1])

    @classmethod
    def from_checkpoint(cls, ckpt) -> ServingGraph:
        """The eval-mode graph of a :class:`cxr.training.checkpoint.Checkpoint` at its input size S
        (one S: ``load_checkpoint`` refuses a checkpoint whose model and preprocessing disagree)."""
        return cls(ckpt.build_model(), ckpt.preprocess.size).eval()

    # ---------------------------------------------------------------------- RPN
    def proposals(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """RPN -> proposals ``[B, N, 4]`` and validity ``[B, N]`` (N = post_nms_top_n)."""
        objectness, deltas = self.rpn_head(feats)
        batch = feats[0].shape[0]
        obj = torch.cat([o.permute(0, 2, 3, 1).reshape(batch, -1) for o in objectness], 1)
        # [B, A*4, H, W] -> [B, H*W*A, 4], the order torchvision's anchors use
        dl = torch.cat([d.reshape(batch, -1, 4, d.shape[-2], d.shape[-1]).permute(0, 3, 4, 1, 2).reshape(batch, -1, 4) for d in deltas], 1)

        picks, levels, offset = [], [], 0
        for lvl, n in enumerate(self.anchors_per_level):
            k = min(self.pre_nms_top_n, n)
            _, idx = obj[:, offset : offset + n].topk(k, dim=1)
            picks.append(idx + offset)
            levels.append(torch.full((k,), lvl, dtype=torch.int64))
            offset += n
        idx = torch.cat(picks, 1)  # [B, P]
        lvl = torch.cat(levels).to(obj.device)
        scores = torch.sigmoid(obj.gather(1, idx))
        d = dl.gather(1, idx[..., None].expand(-1, -1, 4))
        a = self.anchors[idx.reshape(-1)]
        boxes = self.rpn_coder.decode_single(d.reshape(-1, 4), a).reshape(batch, -1, 4).clamp(0, self.size)

        wh = boxes[..., 2:] - boxes[..., :2]
        ok = (wh >= self.rpn_min_size).all(-1) & (scores >= self.rpn_score_thresh)
        scores = torch.where(ok, scores, torch.full_like(scores, -1.0))
        shifted = boxes + (lvl.to(boxes.dtype) * (self.size + 1))[None, :, None]  # levels never overlap
        selected = _BatchedNMS.apply(shifted, scores, self.post_nms_top_n, self.rpn_nms_thresh, -0.5)
        index, valid = _pad_selected(selected, batch, self.post_nms_top_n)
        props = boxes.gather(1, index[..., None].expand(-1, -1, 4))
        return props, valid

    # ---------------------------------------------------------------------- ROI
    def roi_align(self, feats: dict[str, torch.Tensor], props: torch.Tensor, output_size=None,
                  sampling_ratio: int | None = None) -> torch.Tensor:
        """``[B, N, 4]`` boxes -> pooled features ``[B * N, C, h, w]`` (the box pooler's size unless given)."""
        output_size = self.pool_output if output_size is None else output_size
        sampling_ratio = self.sampling_ratio if sampling_ratio is None else sampling_ratio
        batch, n = props.shape[:2]
        flat = props.reshape(-1, 4)
        image_ids = torch.arange(batch, device=props.device, dtype=props.dtype)[:, None].expand(batch, n).reshape(-1)
        rois = torch.cat([image_ids[:, None], flat], 1)
        if self.mapper.k_min == self.mapper.k_max:  # one pooling level (MobileNet FPN): every ROI pools there
            return torchvision.ops.roi_align(feats[self.pool_names[0]], rois, output_size, spatial_scale=self.pool_scales[0],
                                             sampling_ratio=sampling_ratio, aligned=False)
        levels = self.mapper([flat])
        channels = feats[self.pool_names[0]].shape[1]
        out = rois.new_zeros((rois.shape[0], channels, *output_size))
        for lvl, (name, scale) in enumerate(zip(self.pool_names, self.pool_scales)):
            # Pool each ROI on its own level only (NonZero -> RoiAlign -> ScatterND):
            # pooling every ROI on every level and selecting afterwards cost L times
            # the RoiAlign work, about half the CPU time of the whole graph.  The
            # ScatterND (~7 ms of an R50-FPN @512 on OpenVINO) stays: feeding each
            # level's rows straight into fc6 instead sped BF16 up 8 % but slowed the
            # served INT8-BF16 path 19 % (its input Quantize no longer fuses) and moved
            # ORT INT8 parity from +0.006 to +0.013 (benchmarks/README.md, issue 26).
            idx = torch.nonzero(levels == lvl).squeeze(1)
            pooled = torchvision.ops.roi_align(feats[name], rois[idx], output_size, spatial_scale=scale, sampling_ratio=sampling_ratio, aligned=False)
            out = out.index_put((idx,), pooled)
        return out

    def forward(self, images: torch.Tensor):
        batch = images.shape[0]
        feats = self.backbone(images)
        props, valid = self.proposals(list(feats.values()))
        n = props.shape[1]

        pooled = self.roi_align(feats, props)
        logits, regression = self.roi_heads.box_predictor(self.roi_heads.box_head(pooled))
        num_classes = logits.shape[-1]
        boxes = self.roi_heads.box_coder.decode_single(regression, props.reshape(-1, 4))
        boxes = boxes.reshape(batch, n, num_classes, 4).clamp(0, self.size)[:, :, 1:]
        scores = torch.softmax(logits, -1).reshape(batch, n, num_classes)[:, :, 1:]
        labels = torch.arange(1, num_classes, device=images.device).expand(batch, n, -1)

        wh = boxes[..., 2:] - boxes[..., :2]
        ok = valid[..., None] & (wh >= 1e-2).all(-1) & (scores > self.score_thresh)
        scores = torch.where(ok, scores, torch.full_like(scores, -1.0)).reshape(batch, -1)
        k = min(self.candidates, n * (num_classes - 1))
        top, idx = scores.topk(k, dim=1)
        out_boxes = boxes.reshape(batch, -1, 4).gather(1, idx[..., None].expand(-1, -1, 4))
        out_labels = labels.reshape(batch, -1).gather(1, idx)
        count = (top > self.score_thresh).sum(1)
        if not self.has_masks:
            return out_boxes, top, out_labels, count
        return out_boxes, top, out_labels, count, self.masks(feats, out_boxes, out_labels)

    def masks(self, feats: dict[str, torch.Tensor], boxes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Candidates' boxes ``[B, K, 4]`` (S x S frame) and labels ``[B, K]`` -> mask probabilities
        ``[B, K, M, M]`` of each candidate's own class (torchvision's ``maskrcnn_inference``)."""
        batch, k = boxes.shape[:2]
        pooled = self.roi_align(feats, boxes, self.mask_pool_output, self.mask_sampling_ratio)
        logits = self.roi_heads.mask_predictor(self.roi_heads.mask_head(pooled))  # [B*K, classes, M, M]
        m = self.mask_size
        chosen = logits.gather(1, labels.reshape(-1, 1, 1, 1).expand(-1, 1, m, m))
        return torch.sigmoid(chosen).reshape(batch, k, m, m)
