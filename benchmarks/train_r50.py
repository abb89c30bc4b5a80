"""``cxr bench train-r50``: the CPU-sized ResNet-50 FPN that INT8 parity is judged on.

INT8 parity needs a trained model: an untrained detector's scores are noise, and
whether 8-bit activations move a detection depends on the activation ranges training
produces.  The product's model is ``--preset r50-fpn`` (800 px, SGD, batch 8, AMP: a
GPU run); this is the same network with overrides that fit two CPU cores in a fixed
time budget, recorded in the checkpoint (``train_config``) and so in every bench report
that uses it.  Only training-time fields change: the test-time RPN top-n, the anchors and
the box head are the preset's, so the served graph and its speed are the product's.

::

    cxr bench train-r50 --data demo-out/data --out runs/r50-cpu --minutes 120
    cxr export onnx --checkpoint runs/r50-cpu/best.pt --repository runs/r50-cpu/repo --data demo-out/data --check
    cxr export onnx-int8 --int8-all --checkpoint runs/r50-cpu/best.pt --repository runs/r50-cpu/repo --data demo-out/data --check
    cxr bench --checkpoint runs/r50-cpu/best.pt --repository runs/r50-cpu/repo --data demo-out/data --out bench-r50
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

PRESET = "r50-fpn"
# The overrides, each with its reason.  Everything else is the preset's.
CPU_OVERRIDES: dict = dict(
    size=512,  # the bench's R50-FPN size; 800 px triples the cost per image
    batch_size=2,  # 2 cores: larger batches only make each iteration longer
    optimizer="adamw",  # from scratch (no ImageNet file here) AdamW converges fastest, as in cpu-demo
    lr=3e-4,  # AdamW for a ResNet-50 detector at batch 2; SGD's 0.02 assumes 16 images per step
    warmup_iters=100,  # the preset's 500 would be a third of a two-hour CPU run
    amp=False,  # CUDA-only in cxr train
    workers=0,  # both cores go to the model's own threads
    epochs=200,  # an upper bound: the time budget ends the run (the cosine schedule follows it)
    rpn_pre_nms_top_n_train=1000,  # training-time proposals only (test-time top-n stay the preset's)
    rpn_post_nms_top_n_train=1000,
    box_batch_size_per_image=256,
    fused_optimizer=True,  # AdamW in one pass over the 41M parameters instead of several
)
DEFAULT_MINUTES = 120.0


def train_config(data: Path, out: Path, *, minutes: float = DEFAULT_MINUTES, seed: int = 0, progress: bool = True):
    """The :class:`cxr.training.config.TrainConfig`: ``--preset r50-fpn`` plus :data:`CPU_OVERRIDES`."""
    from cxr.errors import InvalidOptionError
    from cxr.training.config import make_config

    if not minutes > 0:
        raise InvalidOptionError(f"--minutes must be positive, got {minutes}")
    return make_config(PRESET, **CPU_OVERRIDES, data=Path(data), out=Path(out), max_minutes=float(minutes), seed=seed,
                       device="cpu", progress=progress)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, metavar="DIR", required=True, help="NIH-layout dataset, e.g. the demo's demo-out/data")
    p.add_argument("--out", type=Path, metavar="RUN", required=True, help="run folder for best.pt / last.pt")
    p.add_argument("--minutes", type=float, metavar="M", help=f"time budget (default {DEFAULT_MINUTES:g}; recorded in the checkpoint)")
    p.add_argument("--seed", type=int, metavar="S", help="training seed (default 0)")
    p.add_argument("--dry-run", action="store_true", help="print the training configuration and exit")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


DESCRIPTION = (
    "Train the CPU-sized ResNet-50 FPN that `cxr bench` judges INT8 parity on: `cxr train --preset r50-fpn` with "
    "overrides for two CPU cores (512 px, batch 2, AdamW, a fixed time budget; listed by --dry-run). Only training-time "
    "fields change, so the served model and its speed are the product's. Then export it (onnx and onnx-int8 --int8-all, "
    "with --check) and pass it to `cxr bench --checkpoint`.")


def cmd_train_r50(args: argparse.Namespace) -> int:
    import dataclasses

    cfg = train_config(args.data, args.out, minutes=getattr(args, "minutes", None) or DEFAULT_MINUTES,
                       seed=getattr(args, "seed", None) or 0, progress=not getattr(args, "quiet", False))
    shown = json.dumps(dataclasses.asdict(cfg), default=str, indent=1)
    if getattr(args, "dry_run", False):
        print(shown)
        return 0
    from cxr.training.train import train

    log.info("training R50-FPN for the CPU: %s", shown)
    best = train(cfg)
    repo = Path(cfg.out) / "repo"
    print(f"wrote {best} (budget {cfg.max_minutes:g} min). Next:\n"
          f"  cxr export onnx --checkpoint {best} --repository {repo} --data {cfg.data} --check\n"
          f"  cxr export onnx-int8 --int8-all --checkpoint {best} --repository {repo} --data {cfg.data} --check\n"
          f"  cxr bench --checkpoint {best} --repository {repo} --data {cfg.data} --out bench-r50")
    return 0
