"""``cxr train``: Faster R-CNN on NIH-layout data, from one config dataclass.

Multi-GPU / multi-node runs use ``torchrun`` (PyTorch DDP): launch
``torchrun --nproc-per-node 8 -m cxr.cli train --data ... --out ...``;
rank 0 evaluates and writes checkpoints.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import os
import random
import time
from pathlib import Path

import numpy as np
import torch

from cxr.errors import InvalidFileError, InvalidOptionError
from cxr.labels import get_labelset
from cxr.postprocess import PostprocessConfig
from cxr.preprocess import PreprocessConfig
from cxr.training.config import TrainConfig, model_config
from cxr.training.schedule import TimeBudget, lr_lambda, make_optimizer

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _join_process_group(device: torch.device) -> bool:
    """Under torchrun (``WORLD_SIZE`` > 1) join the process group; True if this call created it.

    The backend follows the training device: NCCL reduces CUDA tensors only, so
    ``--device cpu`` on a GPU host needs gloo.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or torch.distributed.is_initialized():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return True


def check_normalisation(weights, pre: PreprocessConfig) -> None:
    """Pretrained weights expect the normalisation they were trained with; serving runs the
    checkpoint's preprocessing, so the two must agree here, once."""
    if weights is None or weights.mean is None:
        return
    if pre.channels != len(weights.mean) or not np.allclose(pre.mean, weights.mean) or not np.allclose(pre.std, weights.std):
        raise InvalidOptionError(
            f"--weights {weights.name} expects {len(weights.mean)} channels normalised with mean {list(weights.mean)}, "
            f"std {list(weights.std)}; the preprocessing has {pre.channels} channels, mean {list(pre.mean)}, std {list(pre.std)}")


def train(cfg: TrainConfig) -> Path:
    """Train, keep the best checkpoint on validation mAP@0.5; returns its path.

    Under torchrun every rank trains and returns the same path; rank 0 validates and
    writes the checkpoints, and no rank returns before they are written.
    """
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device)
    owns_group = _join_process_group(device)
    try:
        best = _train(cfg, device)
        if torch.distributed.is_initialized():
            torch.distributed.barrier()  # rank 0 may still be writing the checkpoint the others return
        return best
    finally:
        if owns_group:
            torch.distributed.destroy_process_group()


def _train(cfg: TrainConfig, device: torch.device) -> Path:
    from cxr.training.checkpoint import Checkpoint, data_fingerprint, load_checkpoint
    from cxr.training.engine import ground_truth, train_one_epoch
    from cxr.training.model import DETECTOR_TWIN  # a Mask R-CNN's backbone takes its detector twin's ImageNet file
    from cxr.training.precision import TrainPrecision
    from cxr.training.weights import resolve as resolve_weights

    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if distributed else (0, 1)
    seed_everything(cfg.seed + rank)
    labelset = get_labelset(cfg.labelset)
    train_studies, val_studies = _studies(cfg, labelset)

    prev = load_checkpoint(cfg.resume) if cfg.resume is not None else None
    weights = resolve_weights(cfg.weights, arch=DETECTOR_TWIN.get(cfg.arch, cfg.arch)) if prev is None else None  # resumed: the checkpoint's
    pre = PreprocessConfig(size=cfg.size)
    check_normalisation(weights, pre)
    mcfg = model_config(cfg, labelset.num_classes)
    model, weights_meta = _initial_model(cfg, mcfg, weights, prev)
    model, precision, ema = _placed(cfg, model, device)
    train_loader, val_loader, sampler = _loaders(cfg, train_studies, val_studies, labelset, pre, rank=rank, world=world)

    optimizer = make_optimizer(cfg, model)
    total_iters = cfg.epochs * max(1, len(train_loader))
    t_start = time.monotonic()
    budget = TimeBudget(cfg.max_minutes, device=device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total_iters, lambda: budget.fraction))
    scaler = torch.amp.GradScaler("cuda") if precision is TrainPrecision.FP16 else None
    ddp_model = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model

    history, start_epoch, best = [], 0, float("-inf")  # the first validated epoch is always kept
    if prev is not None:
        history, start_epoch, best, weights_meta = _resume(prev, model, optimizer, scheduler, ema)

    cfg.out.mkdir(parents=True, exist_ok=True)
    fingerprint = data_fingerprint(train_studies + val_studies)
    run_meta = _run_meta(cfg, fingerprint, len(train_studies), len(val_studies), weights_meta, precision, ema)
    # What every checkpoint of this run shares; each save adds its epoch's metadata and state.
    run_ckpt = Checkpoint(state={}, model_config=mcfg, preprocess=pre, class_names=labelset.names, labelset_name=labelset.name,
                          model_version=f"{_dt.date.today():%Y.%m.%d}+{fingerprint[:8]}", meta=run_meta,
                          postprocess=PostprocessConfig(iou_threshold=cfg.nms_iou))
    gts = ground_truth(val_studies, labelset, masks=cfg.task == "segment")

    for epoch in range(start_epoch, cfg.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        rows = train_one_epoch(ddp_model, optimizer, train_loader, device, epoch, scheduler=scheduler, scaler=scaler,
                               clip_grad_norm=cfg.clip_grad_norm, progress=cfg.progress and rank == 0, should_stop=budget.expired,
                               precision=precision, ema=ema, loss_weights={"loss_mask": cfg.mask_loss_weight})
        out_of_time = budget.expired()
        if out_of_time:  # every rank says where it stopped: the same place, or DDP would hang
            log.info("time budget of %g min used up: stopping after iteration %d/%d of epoch %d (rank %d of %d)",
                     cfg.max_minutes, len(rows), len(train_loader), epoch, rank, world)
        epoch_row = _epoch_row(epoch, rows)
        last = epoch == cfg.epochs - 1 or out_of_time
        if rank == 0 and (last or (epoch + 1) % cfg.val_every == 0):
            judged = model if ema is None else ema.module  # the EMA weights are the model that is kept
            m, thresholds = _validate(judged, val_loader, gts, labelset.names, device=device, progress=cfg.progress,
                                      postprocess=run_ckpt.postprocess)
            epoch_row.update(val_map50=m["map50"], val_map40=m["map40"], val_froc_mean=m["froc_mean"])
            segm = {f"segm_{k}": m["segm"][k] for k in ("ap", "ap50", "dice_median")} if "segm" in m else {}
            epoch_row.update({f"val_{k}": v for k, v in segm.items()})
            chosen = m["segm"]["ap50"] if segm else m["map50"]  # the segment task is judged by its masks
            score = chosen if chosen is not None else -1.0
            meta = {**run_meta, "history": history + [epoch_row], "val_metrics": {**{k: m[k] for k in ("map50", "map40", "map50_95", "froc_mean")}, **segm},
                    "thresholds": thresholds, "epoch": epoch}
            state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "epoch": epoch, "best": max(best, score),
                     "ema": None if ema is None else ema.state_dict()}
            _save(cfg.out, model, judged, dataclasses.replace(run_ckpt, meta=meta, train_state=state),
                  is_best=score > best or cfg.select == "last")
            best = max(best, score)
            _log_epoch(cfg, epoch, start_epoch, epoch_row, score, best, time.monotonic() - t_start)
        history.append(epoch_row)
        if last:
            break
    if rank == 0:
        (cfg.out / "history.json").write_text(json.dumps(history, indent=1))
    return cfg.out / "best.pt"


def _run_meta(cfg: TrainConfig, fingerprint: str, n_train: int, n_val: int, weights_meta: dict, precision, ema) -> dict:
    """What every checkpoint of the run records about how it was trained, and on what CPU (numerics differ by ISA)."""
    from cxr.machine import cpu_info, isa_line

    return {"train_config": json.loads(json.dumps(dataclasses.asdict(cfg), default=str)), "data_fingerprint": fingerprint,
            "n_train": n_train, "n_val": n_val, "weights": weights_meta,
            "precision": precision.value, "isa": isa_line(cpu_info()), "cpu": cpu_info()["model"],
            "ema": None if ema is None else {"decay": cfg.ema_decay, "warmup": cfg.ema_warmup}, "select": cfg.select}


def _placed(cfg: TrainConfig, model: torch.nn.Module, device: torch.device):
    """``(model, precision, ema)``: the model on ``device`` in the layout its precision wants, and its EMA (or None)."""
    from cxr.training.ema import ModelEma
    from cxr.training.precision import TrainPrecision, resolve as resolve_precision

    model = model.to(device)
    precision = resolve_precision(cfg.precision if (cfg.amp or device.type != "cuda") else "fp32", device)
    if precision is TrainPrecision.BF16:
        # oneDNN's AMX/AVX512-BF16 convolutions want NHWC: NCHW bf16 convolutions reorder every call
        model = model.to(memory_format=torch.channels_last)
    ema = ModelEma(model, decay=cfg.ema_decay, warmup=cfg.ema_warmup) if cfg.ema_decay > 0 else None
    return model, precision, ema


def _studies(cfg: TrainConfig, labelset) -> tuple[list, list]:
    """The training and validation studies of ``cfg.data`` (patient-level split); neither may be empty."""
    from cxr.training.annotations import NIHDataset

    ds = NIHDataset.from_dir(cfg.data, labelset=labelset.name, seed=cfg.seed, require_images=True)
    train_studies, val_studies = ds.detection_studies("train"), ds.detection_studies("val")
    if not train_studies:
        raise InvalidFileError(f"{cfg.data}: no training studies with boxes or 'No Finding' (see `cxr data info {cfg.data}`)")
    if not val_studies:
        raise InvalidFileError(f"{cfg.data}: the validation split is empty; add images or patients")
    return train_studies, val_studies


def _initial_model(cfg: TrainConfig, mcfg, weights, prev) -> tuple[torch.nn.Module, dict]:
    """The network before training and the record of what initialised it (``meta["weights"]``).

    A new run loads the resolved ``weights`` and freezes over them; a resumed run (``prev``)
    freezes the layers its checkpoint froze (its saved optimizer state holds exactly the
    others) and gets its weights from the checkpoint later, in :func:`_resume`.
    """
    from cxr.training.model import build_model, freeze_backbone, freeze_modules, load_pretrained

    model = build_model(mcfg)
    weights_meta = {"name": "none"}
    if weights is not None:
        report = load_pretrained(model, weights.path, arch=cfg.arch)
        frozen = freeze_backbone(model, cfg.trainable_backbone_layers)
        weights_meta = {**weights.to_dict(), "loaded": report["loaded"], "of": report["of"], "frozen": frozen}
        log.info("initialised from %s (%s, sha256 %s): %d/%d tensors; re-initialised: %s; frozen: %s", weights.name, weights.path,
                 weights.sha256[:12], report["loaded"], report["of"], report["skipped_shape_mismatch"] or "none", frozen or "none")
    elif prev is not None:
        freeze_modules(model, list(prev.meta.get("weights", {}).get("frozen", [])))
    return model, weights_meta


def _loaders(cfg: TrainConfig, train_studies, val_studies, labelset, pre: PreprocessConfig, *, rank: int, world: int):
    """``(train_loader, val_loader, sampler)``: the sampler is the training loader's DistributedSampler under
    DDP (its epoch must be set each epoch), else None."""
    from torch.utils.data import DataLoader, DistributedSampler

    from cxr.training.torch_dataset import Augmenter, DetectionDataset, collate

    masks = cfg.task == "segment"  # targets carry instance masks
    train_set = DetectionDataset(train_studies, labelset, pre, augment=Augmenter() if cfg.augment else None, seed=cfg.seed + rank,
                                 masks=masks)
    val_set = DetectionDataset(val_studies, labelset, pre)
    sampler = DistributedSampler(train_set, seed=cfg.seed) if world > 1 else None
    loader_gen = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=sampler is None, sampler=sampler,
                              num_workers=cfg.workers, collate_fn=collate, generator=loader_gen, drop_last=len(train_set) > cfg.batch_size)
    val_loader = DataLoader(val_set, batch_size=cfg.batch_size, num_workers=cfg.workers, collate_fn=collate)
    return train_loader, val_loader, sampler


def _resume(prev, model: torch.nn.Module, optimizer, scheduler, ema=None) -> tuple[list, int, float, dict]:
    """Load ``prev`` into the run: ``(history, start_epoch, best, weights_meta)`` to continue from."""
    start_epoch, best = 0, float("-inf")
    model.load_state_dict(prev.state)
    if prev.train_state:
        optimizer.load_state_dict(prev.train_state["optimizer"])
        scheduler.load_state_dict(prev.train_state["scheduler"])
        start_epoch = int(prev.train_state["epoch"]) + 1
        if ema is not None and prev.train_state.get("ema"):
            ema.load_state_dict(prev.train_state["ema"])
        best = float(prev.train_state.get("best", float("-inf")))
    weights_meta = prev.meta.get("weights", {"name": "unknown (checkpoint written before cxr recorded it)"})
    return list(prev.meta.get("history", [])), start_epoch, best, weights_meta


def _log_epoch(cfg: TrainConfig, epoch: int, start_epoch: int, row: dict, score: float, best: float, elapsed: float) -> None:
    """One line per validated epoch, with the time left: training is bounded by work (epochs), not minutes."""
    left = elapsed / (epoch + 1 - start_epoch) * (cfg.epochs - epoch - 1)
    log.info("epoch %d/%d: loss %.3f, val %s %.3f (best %.3f), %.1f img/s, %.1f min, about %.1f min left", epoch + 1, cfg.epochs,
             row["loss"], "segm AP50" if cfg.task == "segment" else "mAP@0.5", score, best, row["images_per_s"], elapsed / 60, left / 60)


def _epoch_row(epoch: int, rows: list[dict]) -> dict:
    """One history entry from an epoch's per-iteration rows: mean losses, last lr, median images/s."""
    return {"epoch": epoch, "iterations": len(rows), "loss": float(np.mean([r["loss"] for r in rows])),
            "lr": rows[-1]["lr"],
            "images_per_s": float(np.median([r["images_per_s"] for r in rows])),
            **{k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k.startswith("loss_")}}


def _validate(model: torch.nn.Module, loader, gts: list, class_names, *, device: torch.device, progress: bool,
              postprocess=None) -> tuple[dict, dict]:
    """Validation metrics (no bootstrap; a Mask R-CNN's with ``segm``) and the image-level thresholds chosen on the same predictions."""
    from cxr.training.engine import validate

    return validate(model, loader, gts, class_names, device=device, progress=progress, postprocess_config=postprocess)


def _save(out: Path, model: torch.nn.Module, kept: torch.nn.Module, ckpt, *, is_best: bool) -> None:
    """``last.pt``: the trained weights with the state to resume from (the EMA's among it); ``best.pt``:
    the weights that are kept (``kept``: the EMA's when there is one), when this epoch is chosen."""
    from cxr.training.checkpoint import save_checkpoint

    save_checkpoint(out / "last.pt", model, ckpt)
    if is_best:
        save_checkpoint(out / "best.pt", kept, dataclasses.replace(ckpt, train_state=None))
