"""An exponential moving average of a model's weights, as timm (``ModelEmaV3``) and Ultralytics keep one.

Batch-4 detection training on a few hundred films is noisy: the weights after any one
iteration carry that batch's gradient, and the validation mAP of consecutive epochs
swings by 0.1 and more.  The average of the recent weights is a smoother model: it is
what is validated, checkpointed, exported and served.  BatchNorm running statistics
are averaged like the weights (they are noisy at batch 4 too).
"""

from __future__ import annotations

import copy
import math

import torch


class ModelEma:
    """``ema = d * ema + (1 - d) * model`` after every optimiser step.

    decay: the long-run ``d``; its time constant is ``1 / (1 - decay)`` iterations
    (0.998: 500 iterations, about 9 epochs of the demo's 217 films at batch 4).
    warmup: ``d`` ramps up as ``decay * (1 - exp(-step / warmup))`` (Ultralytics' form),
    so the first iterations do not average in the untrained start.
    """

    def __init__(self, model: torch.nn.Module, *, decay: float = 0.998, warmup: float = 100.0) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.warmup, self.updates = float(decay), float(warmup), 0

    def current_decay(self) -> float:
        return self.decay * (1.0 - math.exp(-self.updates / self.warmup))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = self.current_decay()
        source = model.module if hasattr(model, "module") else model  # DDP wraps the model
        ema_state = self.module.state_dict()
        for name, value in source.state_dict().items():
            target = ema_state[name]
            if target.dtype.is_floating_point:
                target.mul_(d).add_(value.detach().to(target.dtype), alpha=1.0 - d)
            else:  # num_batches_tracked and other counters: the latest
                target.copy_(value)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay, "warmup": self.warmup}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
