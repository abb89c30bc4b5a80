"""``train_one_epoch`` and ``predict`` as plain functions (torchvision references style)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch
from tqdm import tqdm

from cxr.boxes import LetterboxRecord
from cxr.postprocess import PostprocessConfig, postprocess


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
) -> list[dict]:
    """One pass over ``loader``; returns one row per iteration (losses, lr, images/s).

    ``should_stop`` is called after every iteration, on every rank: under DDP it must
    give all ranks the same answer (:class:`cxr.training.schedule.TimeBudget` does), or
    the ranks that go on wait for the others in the next all-reduce.
    Raises ``FloatingPointError`` on a non-finite loss instead of training on NaNs.
    precision: a :class:`~cxr.training.precision.TrainPrecision` (None: float16 AMP when
    ``scaler`` is given, else FP32); ema: a :class:`~cxr.training.ema.ModelEma` updated
    after every optimiser step.
    """
    from cxr.training.precision import TrainPrecision, autocast

    if precision is None:
        precision = TrainPrecision.FP16 if scaler is not None else TrainPrecision.FP32
    model.train()
    rows: list[dict] = []
    bar = tqdm(loader, desc=f"epoch {epoch}", disable=not progress, leave=False, dynamic_ncols=True)
    for images, targets in bar:
        t0 = time.perf_counter()
        images = [im.to(device, non_blocking=True) for im in images]
        targets = [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
        with autocast(precision, device):
            losses = model(images, targets)
            loss = sum(losses.values())
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
    "scores": [N], "labels": [N] (1-based)}`` as numpy arrays.
    """
    model.eval()
    out: list[dict] = []
    for images, targets in tqdm(loader, desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
        raw = model([im.to(device) for im in images])
        for r, t in zip(raw, targets):
            record = LetterboxRecord.from_array(t["record"].numpy())
            det = postprocess(
                r["boxes"].cpu().numpy(), r["scores"].cpu().numpy(), r["labels"].cpu().numpy(), record, postprocess_config
            )
            out.append({"boxes": det.boxes, "scores": det.scores, "labels": det.labels})
    return out


def ground_truth(studies, labelset) -> list[dict]:
    """Ground truth in the form the metrics module takes (ORIGINAL pixels)."""
    return [
        {"boxes": np.asarray(s.boxes, np.float32).reshape(-1, 4), "labels": np.asarray(labelset.class_ids(s.box_labels), np.int64)}
        for s in studies
    ]
