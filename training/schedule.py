"""How a training run steps: parameter groups, the optimizer, the learning-rate schedule
and the ``--max-minutes`` budget that schedule follows (one decision for all DDP ranks)."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # train.py imports this module: the config type only for the annotations
    from cxr.training.config import TrainConfig


def param_groups(model: torch.nn.Module, lr: float, backbone_lr_mult: float) -> list[dict]:
    """Trainable parameters: FPN and heads at ``lr`` (group 0, the one logged), the
    backbone body at ``lr * backbone_lr_mult`` (pretrained features move slower)."""
    heads, body = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (body if name.startswith("backbone.body.") else heads).append(p)
    groups = [{"params": heads, "lr": lr}]
    if body:
        groups.append({"params": body, "lr": lr * backbone_lr_mult})
    return groups


def make_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """SGD or AdamW (``cfg.optimizer``) over :func:`param_groups`."""
    params = param_groups(model, cfg.lr, cfg.backbone_lr_mult)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=cfg.fused_optimizer or None)


def lr_lambda(cfg: TrainConfig, total_iters: int, elapsed_fraction=lambda: 0.0):
    """Warm-up then cosine or step decay over iterations -- or over the time budget
    (``--max-minutes``), whichever runs out first, so a time-boxed run still ends
    with a decayed learning rate."""

    def f(it: int) -> float:
        warm = min(1.0, (it + 1) / max(1, cfg.warmup_iters))
        progress = min(1.0, max(it / max(1, total_iters), elapsed_fraction()))
        if cfg.schedule == "cosine":
            return warm * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress)))
        return warm * (0.1 ** sum(progress >= m for m in (2 / 3, 8 / 9)))

    return f


class TimeBudget:
    """``--max-minutes`` as one decision for all ranks.

    Each rank reads its own clock, and ranks disagree about the time (their clocks
    start at different moments, one is slowed by data loading or a busy host).  A rank
    that stopped alone would leave the others waiting in DDP's next all-reduce, and a
    learning rate that followed each rank's own clock would step the replicas apart.
    So :meth:`expired` takes the largest elapsed time over the ranks (one all-reduce
    of one number per iteration, nothing next to DDP's gradients) and every rank
    stops after the same iteration; :attr:`fraction` is that agreed value.
    """

    def __init__(self, minutes: float | None, *, device: torch.device = torch.device("cpu"), clock=time.monotonic) -> None:
        self.seconds = 60.0 * minutes if minutes else None
        self.device = device  # NCCL reduces device tensors only
        self.clock = clock
        self.start = clock()
        self.fraction = 0.0  # agreed elapsed share of the budget, as of the last expired()

    def expired(self) -> bool:
        """Whether any rank is past the budget.  A collective under DDP: every rank calls
        it at the same points (after each iteration and at each epoch end)."""
        if self.seconds is None:
            return False
        if self.fraction <= 1.0:  # once agreed, expiry stays agreed: no more collectives
            elapsed = torch.tensor([(self.clock() - self.start) / self.seconds], dtype=torch.float64, device=self.device)
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.all_reduce(elapsed, op=torch.distributed.ReduceOp.MAX)
            self.fraction = float(elapsed.item())
        return self.fraction > 1.0
