"""Where a model trained with a preset lies against that preset's measured spread.

A quality figure of a training recipe is a spread over training seeds, on a held-out set large
enough for a narrow interval, on a named kind of CPU (training/README.md, "Training the demo
model"). This module holds those runs and says where a new evaluation lies among them:
``cxr evaluate --reference cpu-demo`` (the demo calls it) on the reference held-out set,
``cxr synth DIR --images 500 --seed 2027`` evaluated with ``--split all``.

The runs below are the table in training/README.md; each was trained by ``cxr train --preset cpu-demo
--seed S`` on ``cxr synth --images 300 --seed 1`` (the demo's data) and evaluated by
``cxr evaluate --split all`` on the reference held-out set.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from cxr.errors import InvalidOptionError
from cxr.machine import cpu_kind, isa_line

__all__ = ["HELDOUT", "REFERENCE", "ReferenceRun", "check_preset", "spread", "where_it_lies"]


@dataclass(frozen=True)
class HeldOut:
    """The reference held-out set: a synthetic data seed of its own, never trained or validated on."""

    images: int
    seed: int
    n_gt: int  # true boxes in it: a set with another count is another set

    @property
    def command(self) -> str:
        return f"cxr synth DIR --images {self.images} --seed {self.seed}"


HELDOUT = HeldOut(images=500, seed=2027, n_gt=420)


@dataclass(frozen=True)
class ReferenceRun:
    """One training seed of a preset on one kind of CPU, evaluated on :data:`HELDOUT`."""

    seed: int
    cpu_kind: str  # cxr.machine.cpu_kind
    isa: str  # cxr.machine.isa_line
    precision: str  # what --precision auto chose there
    map50: float
    map50_ci: tuple[float, float]  # bootstrap 95 %
    nodule: float  # AP@0.5 of the three small-finding classes the targets name
    mass: float
    pneumothorax: float
    duplicate_rate: float  # true findings with 2+ same-class boxes at score >= 0.3 (training/duplicates.py)
    recall: float  # at the same operating point
    int8: str  # what `cxr export onnx-int8 --check` did with it
    images_per_s: float  # training, median epoch


_SPR = "AVX2 yes, AVX-512 yes, VNNI yes, BF16 yes, AMX yes"
REFERENCE: dict[str, tuple[ReferenceRun, ...]] = {
    "cpu-demo": (
        # seed 0 is `make demo` itself, from a fresh clone (OMP_NUM_THREADS=1 beside other work)
        ReferenceRun(seed=0, cpu_kind="amx", isa=_SPR, precision="bf16", map50=0.8171, map50_ci=(0.7826, 0.8590),
                     nodule=0.787, mass=0.809, pneumothorax=0.845, duplicate_rate=0.0053,
                     recall=0.9048, int8="placed, mAP +0.000", images_per_s=3.4),
        ReferenceRun(seed=1, cpu_kind="amx", isa=_SPR, precision="bf16", map50=0.7801, map50_ci=(0.7374, 0.8257),
                     nodule=0.787, mass=0.765, pneumothorax=0.772, duplicate_rate=0.0000,
                     recall=0.9143, int8="placed, mAP +0.005", images_per_s=10.6),
        ReferenceRun(seed=2, cpu_kind="amx", isa=_SPR, precision="bf16", map50=0.7729, map50_ci=(0.7413, 0.8204),
                     nodule=0.805, mass=0.812, pneumothorax=0.824, duplicate_rate=0.0027,
                     recall=0.8881, int8="placed, mAP +0.003", images_per_s=10.1),
        # FP32 on the same CPU: what --precision auto trains on a CPU without BF16 units
        ReferenceRun(seed=1, cpu_kind="amx", isa=_SPR, precision="fp32", map50=0.8295, map50_ci=(0.7952, 0.8696),
                     nodule=0.824, mass=0.867, pneumothorax=0.822, duplicate_rate=0.0051,
                     recall=0.9262, int8="refused, mAP +0.015 > 0.01", images_per_s=2.4),
        ReferenceRun(seed=2, cpu_kind="amx", isa=_SPR, precision="fp32", map50=0.7615, map50_ci=(0.7242, 0.8154),
                     nodule=0.792, mass=0.745, pneumothorax=0.803, duplicate_rate=0.0080,
                     recall=0.8881, int8="refused, mAP +0.071 > 0.01", images_per_s=5.9),
    ),
}


def auto_precision(cpu: dict) -> str:
    """What ``--precision auto`` picks on a CPU (training/precision.py): bf16 where it has BF16 units."""
    return "bf16" if {"amx_bf16", "avx512_bf16"} & set(cpu.get("simd", [])) else "fp32"


def spread(values: list[float]) -> dict:
    """n, mean, sample sd (0 for one value), min and max."""
    return {"n": len(values), "mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}


def check_preset(preset: str) -> None:
    """Refuse a preset without recorded runs, naming those with them."""
    if preset not in REFERENCE:
        raise InvalidOptionError(f"no reference runs for preset {preset!r}; there are: {', '.join(REFERENCE) or 'none'}")


def where_it_lies(metrics: dict, preset: str, cpu: dict) -> str:
    """A few lines on where ``metrics`` (from ``cxr evaluate``) lies against ``preset``'s runs on
    this kind of CPU (``cpu``: :func:`cxr.machine.cpu_info`), or why it cannot be compared."""
    check_preset(preset)
    runs = REFERENCE[preset]
    if not runs:
        return f"No reference runs are recorded for {preset} yet."
    got = (metrics.get("n_images"), metrics.get("n_gt"), metrics.get("split"))
    if got != (HELDOUT.images, HELDOUT.n_gt, "all"):
        return (f"Not compared with the {preset} reference: it was measured on {HELDOUT.images} studies with "
                f"{HELDOUT.n_gt} true boxes, evaluated with --split all; this evaluation has {got[0]} studies, "
                f"{got[1]} boxes, split {got[2]}. Make that set with `{HELDOUT.command}`.")
    kind, precision = cpu_kind(cpu), auto_precision(cpu)
    same = [r for r in runs if r.cpu_kind == kind and r.precision == precision]
    pool = same or [r for r in runs if r.precision == precision] or list(runs)
    s = spread([r.map50 for r in pool])
    x = float(metrics["map50"])
    where = "on" if same else "NOT on this kind of CPU; on"
    kinds = sorted({r.cpu_kind for r in pool})
    lines = [f"Reference {preset}: held-out mAP@0.5 {s['mean']:.3f} +- {s['sd']:.3f} (sd), range {s['min']:.3f}-{s['max']:.3f}, "
             f"{s['n']} training seed{'s' if s['n'] != 1 else ''} in {'/'.join(sorted({r.precision for r in pool}))} {where} {', '.join(kinds)} CPUs "
             "(training/README.md, Training the demo model).",
             f"This CPU: {kind} ({isa_line(cpu)}); --precision auto trains in {precision} here."]
    if s["min"] <= x <= s["max"]:
        verdict = "inside the reference range"
    elif abs(x - s["mean"]) <= 3 * max(s["sd"], 0.01):
        verdict = (f"{'above' if x > s['max'] else 'below'} the range of the reference seeds ({x - s['mean']:+.3f} from "
                   "their mean) but within 3 sd of it")
    elif x > s["mean"]:
        verdict = f"ABOVE the reference ({x - s['mean']:+.3f} from the mean): better than every recorded seed"
    else:
        verdict = (f"BELOW the reference ({x - s['mean']:+.3f} from the mean): not the recipe's usual result; check the "
                   "data (the demo's seed 1), the preset and the package versions")
    lines.append(f"This model: held-out mAP@0.5 {x:.3f}: {verdict}.")
    return "\n".join(lines)
