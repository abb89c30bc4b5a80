"""``cxr bench train-speed``: training images/s per precision, in one process, on this CPU.

The precisions take turns in short rounds of the same iterations (same films, same
augmentation draws, fresh copies of the same initial weights), so a change of machine
load hits every precision alike; the report gives each precision's median images/s over
its rounds and the ratio to FP32 measured in the same run.  Timing covers the forward,
backward and optimiser step (data loading is cached and identical for all).
"""

from __future__ import annotations

import copy
import statistics
import time
from pathlib import Path

import numpy as np

from cxr.errors import InvalidFileError, InvalidOptionError
from cxr.machine import cpu_info, isa_line


def measure(data: Path, *, preset: str = "cpu-demo", precisions=("fp32", "bf16"), iterations: int = 10,
            rounds: int = 5, warmup: int = 3, seed: int = 0, progress: bool = True, **overrides) -> dict:
    """Images/s of ``iterations`` training steps per round, ``rounds`` rounds per precision, interleaved.

    overrides: TrainConfig fields over the preset (e.g. size, batch_size: R50-FPN at a CPU-sized input)."""
    if iterations < 1 or rounds < 1 or warmup < 0:
        raise InvalidOptionError(f"need iterations >= 1, rounds >= 1 and warmup >= 0 (got {iterations}, {rounds}, {warmup})")
    import torch  # here, not at the top: `cxr --help` and `cxr weights` run without torch
    from torch.utils.data import DataLoader

    from cxr.labels import get_labelset
    from cxr.preprocess import PreprocessConfig
    from cxr.training.annotations import NIHDataset
    from cxr.training.model import build_model, load_pretrained
    from cxr.training.precision import TrainPrecision, autocast, resolve
    from cxr.training.torch_dataset import Augmenter, DetectionDataset, collate
    from cxr.training.config import make_config, model_config
    from cxr.training.schedule import param_groups
    from cxr.training.weights import resolve as resolve_weights

    cfg = make_config(preset, data=data, seed=seed, **overrides)
    labelset = get_labelset(cfg.labelset)
    studies = NIHDataset.from_dir(data, labelset=labelset.name, seed=seed, require_images=True).detection_studies("train")
    pre = PreprocessConfig(size=cfg.size)
    dataset = DetectionDataset(studies, labelset, pre, augment=Augmenter(), seed=seed)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, collate_fn=collate,
                        generator=torch.Generator().manual_seed(seed))
    if not studies:
        raise InvalidFileError(f"{data}: no training studies with images to time")
    batches = []  # the same batches for every precision; a small split is gone through again
    while len(batches) < iterations + warmup:
        for images, targets in loader:
            batches.append((images, targets))
            if len(batches) == iterations + warmup:
                break
    torch.manual_seed(seed)
    base = build_model(model_config(cfg, labelset.num_classes))
    weights = resolve_weights(cfg.weights, arch=cfg.arch)
    if weights is not None:
        load_pretrained(base, weights.path, arch=cfg.arch)
    device = torch.device("cpu")
    rates: dict[str, list[float]] = {p: [] for p in precisions}
    for r in range(rounds):
        for name in precisions:
            precision = resolve(name, device)
            model = copy.deepcopy(base)
            if precision is TrainPrecision.BF16:
                model = model.to(memory_format=torch.channels_last)
            model.train()
            opt = torch.optim.AdamW(param_groups(model, cfg.lr, cfg.backbone_lr_mult), lr=cfg.lr, weight_decay=cfg.weight_decay)
            times = []
            for i, (images, targets) in enumerate(batches):
                t0 = time.perf_counter()
                with autocast(precision, device):
                    loss = sum(model(images, targets).values())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad_norm)
                opt.step()
                if i >= warmup:
                    times.append(time.perf_counter() - t0)
            rates[name].append(cfg.batch_size * len(times) / sum(times))
            if progress:
                print(f"round {r + 1}/{rounds} {name}: {rates[name][-1]:.2f} images/s", flush=True)
    cpu = cpu_info()
    med = {p: statistics.median(v) for p, v in rates.items()}
    return {"preset": preset, "cpu": cpu["model"], "isa": isa_line(cpu), "threads": torch.get_num_threads(),
            "iterations_per_round": iterations, "rounds": rounds, "batch_size": cfg.batch_size,
            "images_per_s": {p: {"median": med[p], "rounds": rates[p]} for p in precisions},
            "ratio_to_fp32": {p: med[p] / med["fp32"] for p in precisions} if "fp32" in med else {},
            "load_average": list(np.round(__import__("os").getloadavg(), 2))}


DESCRIPTION = (
    "Training images/s of a preset per precision on this CPU, measured in one process: FP32 and BF16 take turns in "
    "short rounds of the same batches from the same initial weights, so machine load hits both alike; prints each "
    "precision's median over its rounds and the ratio to FP32, with the CPU and its ISA. Data: a training split, "
    "e.g. the demo's demo-out/data.")


def add_arguments(p) -> None:
    p.add_argument("--data", type=Path, metavar="DIR", required=True, help="NIH-layout dataset with a training split")
    p.add_argument("--preset", default="cpu-demo", help="training preset (default cpu-demo)")
    p.add_argument("--iterations", type=int, default=10, metavar="N", help="timed training steps per round (default 10)")
    p.add_argument("--rounds", type=int, default=5, metavar="R", help="rounds per precision (default 5)")
    p.add_argument("--warmup", type=int, default=3, metavar="W", help="untimed steps at the start of each round (default 3)")
    p.add_argument("--size", type=int, default=None, metavar="S", help="input size over the preset's")
    p.add_argument("--batch-size", type=int, default=None, metavar="B", help="batch over the preset's")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def cmd_train_speed(args) -> int:
    import json

    result = measure(args.data, preset=getattr(args, "preset", "cpu-demo"), iterations=getattr(args, "iterations", 10),
                     rounds=getattr(args, "rounds", 5), warmup=getattr(args, "warmup", 3), progress=not getattr(args, "json", False),
                     size=getattr(args, "size", None), batch_size=getattr(args, "batch_size", None))
    if getattr(args, "json", False):
        print(json.dumps(result, indent=1))
        return 0
    print(f"{result['preset']} on {result['cpu']} ({result['isa']}), {result['threads']} threads, batch {result['batch_size']}:")
    for name, v in result["images_per_s"].items():
        ratio = result["ratio_to_fp32"].get(name)
        print(f"  {name:5s} {v['median']:6.2f} images/s (median of {len(v['rounds'])} rounds)"
              + (f"  {ratio:.2f}x FP32" if ratio is not None else ""))
    return 0
