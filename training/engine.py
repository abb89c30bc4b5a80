"""``train_one_epoch`` and ``predict`` as plain functions (torchvision references style)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch
from tqdm import tqdm

from cxr.boxes import LetterboxRecord
from cxr.masks import paste_in_original
from cxr.postprocess import PostprocessConfig, postprocess_indexed


def train_one_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loader,
    device: torch.device,
    epoch: int,
    *,
    scheduler=None,
    scaler: torch.amp.GradScaler | None = None,
    clip_grad_norm: float | None = 10.0,
    progress: bool = True,
    should_stop: Callable[[], bool] = lambda: False,
    precision=None,
    ema=None,
    loss_weights: dict[str, float] | None = None,
) -> list[dict]:
    """One pass over ``loader``; returns one row per iteration (losses, lr, images/s).

    ``should_stop`` is called after every iteration, on every rank: under DDP it must
    give all ranks the same answer (:class:`cxr.training.schedule.TimeBudget` does), or
    the ranks that go on wait for the others in the next all-reduce.
    Raises ``FloatingPointError`` on a non-finite loss instead of training on NaNs.
    precision: a :class:`~cxr.training.precision.TrainPrecision` (None: float16 AMP when
    ``scaler`` is given, else FP32); ema: a :class:`~cxr.training.ema.ModelEma` updated
    after every optimiser step; loss_weights: factors of named losses in the sum that is
    optimised (e.g. ``{"loss_mask": 2.0}``; absent: 1), the rows keep the unweighted losses.
    """
    from cxr.training.precision import TrainPrecision, autocast

    if precision is None:
        precision = TrainPrecision.FP16 if scaler is not None else TrainPrecision.FP32
    weights = {k: w for k, w in (loss_weights or {}).items() if w != 1.0}
    model.train()
    rows: list[dict] = []
    bar = tqdm(loader, desc=f"epoch {epoch}", disable=not progress, leave=False, dynamic_ncols=True)
    for images, targets in bar:
        t0 = time.perf_counter()
        images = [im.to(device, non_blocking=True) for im in images]
        targets = [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
        with autocast(precision, device):
            losses = model(images, targets)
            loss = sum(v * weights.get(k, 1.0) for k, v in losses.items()) if weights else sum(losses.values())
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch}: {({k: v.item() for k, v in losses.items()})}")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if ema is not None:
            ema.update(model)
        if scheduler is not None:
            scheduler.step()
        dt = time.perf_counter() - t0
        row = {"epoch": epoch, "loss": loss.item(), **{k: v.item() for k, v in losses.items()}}
        row.update(lr=optimizer.param_groups[0]["lr"], images_per_s=len(images) / dt)
        rows.append(row)
        bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{row['lr']:.2e}", img_s=f"{row['images_per_s']:.1f}")
        if should_stop():
            break
    return rows


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    loader,
    device: torch.device,
    *,
    postprocess_config: PostprocessConfig = PostprocessConfig(),
    progress: bool = True,
    desc: str = "predict",
) -> list[dict]:
    """Run the model over ``loader`` and apply :func:`cxr.postprocess.postprocess`.

    Returns, per image in loader order, ``{"boxes": [N, 4] xyxy ORIGINAL pixels,
    "scores": [N], "labels": [N] (1-based)}`` as numpy arrays; a Mask R-CNN adds
    ``"masks"``, a :class:`cxr.masks.CroppedMasks` of the N detections in ORIGINAL pixels
    (:func:`cxr.masks.paste_in_original` of the kept candidates' 28 x 28 probabilities).
    """
    model.eval()
    out: list[dict] = []
    for images, targets in tqdm(loader, desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
        raw = model([im.to(device) for im in images])
        for r, t in zip(raw, targets):
            record = LetterboxRecord.from_array(t["record"].numpy())
            boxes = r["boxes"].cpu().numpy()
            rows, det = postprocess_indexed(boxes, r["scores"].cpu().numpy(), r["labels"].cpu().numpy(), record,
                                            postprocess_config)
            pred = {"boxes": det.boxes, "scores": det.scores, "labels": det.labels}
            if "masks" in r:
                pred["masks"] = paste_in_original(r["masks"][:, 0].float().cpu().numpy()[rows], boxes[rows], record)
            out.append(pred)
    return out


def ground_truth(studies, labelset, *, masks: bool = False) -> list[dict]:
    """Ground truth in the form the metrics module takes (ORIGINAL pixels); ``masks=True`` adds
    ``"masks"``, box ``i``'s COCO RLE (``Study.masks.rles``; what :mod:`cxr.training.seg_metrics` takes)."""
    out = []
    for s in studies:
        g = {"boxes": np.asarray(s.boxes, np.float32).reshape(-1, 4), "labels": np.asarray(labelset.class_ids(s.box_labels), np.int64)}
        if masks:
            g["masks"] = list(s.masks.rles) if s.masks is not None else []
        out.append(g)
    return out


def validate(model: torch.nn.Module, loader, gts: list, class_names, *, device: torch.device,
             progress: bool = True, postprocess_config: PostprocessConfig | None = None) -> tuple[dict, dict]:
    """Validation metrics (no bootstrap) and the image-level thresholds chosen on the same
    predictions; a Mask R-CNN's metrics add ``segm`` (:func:`~cxr.training.seg_metrics.evaluate_masks`,
    which needs ``gts`` with masks)."""
    from cxr.training.metrics import choose_thresholds, evaluate_detections
    from cxr.training.seg_metrics import evaluate_masks

    preds = predict(model, loader, device, progress=progress, desc="validate",
                    postprocess_config=postprocess_config or PostprocessConfig())
    metrics = evaluate_detections(preds, gts, class_names, bootstrap=0)
    if preds and "masks" in preds[0]:
        metrics["segm"] = evaluate_masks(preds, gts, class_names, bootstrap=0)
    return metrics, choose_thresholds(preds, gts, class_names)
