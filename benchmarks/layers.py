"""``cxr bench layers``: where a detector's time goes, layer by layer, on each OpenVINO path.

For a checkpoint and the repository ``cxr export`` wrote for it, every OpenVINO path that
``cxr serve`` may choose (:mod:`cxr.serving.paths`: FP32, BF16, INT8, INT8-BF16; a BF16 path
only on a CPU with BF16 units, an INT8 one only when ``model.int8.onnx`` was exported) runs
held-out studies, preprocessed as served, one at a time with OpenVINO's per-layer counters on
(PERF_COUNT).  Each path's time per study is split by the op types OpenVINO executed (after
its own fusions: ``Convolution``, ``FullyConnected``, ``ROIAlign``, ``Reorder`` (layout
changes), ``Subgraph`` (fused element-wise and quantize arithmetic) ...) and by kernel
(``brgconv_avx512_amx_I8``: an AMX INT8 convolution; ``unknown_f32``: a reference
implementation).  This is what says why INT8 is not ~2x BF16 on AMX although its peak is:
the layers that low precision does not shrink.  The counters cost a little time themselves, so
the wall times here are a notch above ``cxr bench latency``'s; compare paths within one run.
Writes OUT/layers.json, layers.md and layers.png (one stacked bar per path).
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from cxr.errors import InvalidOptionError, MissingFileError

PATHS = ("openvino-fp32", "openvino-bf16", "openvino-int8", "openvino-int8-bf16")
SHOWN_OPS = 12  # op types in the table and the plot; the rest is "other"


def _inputs(ckpt, data: Path | None, images: int) -> tuple[list[np.ndarray], str]:
    """Held-out studies, decoded and letterboxed exactly as the preprocess step serves them."""
    from cxr.benchmarks.inputs import load_images
    from cxr.decode.image import decode_image
    from cxr.serving.steps import prepare_batch

    studies, source = load_images(ckpt, data=data, n=images)
    return [prepare_batch([decode_image(s.data)], ckpt.preprocess)[0] for s in studies], source


def profile_path(detector, xs: list[np.ndarray], runs: int) -> dict:
    """``runs`` passes over ``xs`` (after one untimed pass): wall and summed-layer p50, and the mean ms per
    study of each op type and of each (op type, kernel)."""
    for x in xs:
        detector(x)
    walls, sums, by_op, by_kernel = [], [], defaultdict(float), defaultdict(float)
    calls = runs * len(xs)
    for _ in range(runs):
        for x in xs:
            t0 = time.perf_counter()
            detector(x)
            walls.append((time.perf_counter() - t0) * 1e3)
            layers = detector.layer_times(int(x.shape[0]))
            sums.append(sum(ms for _, _, ms in layers))
            for op, kernel, ms in layers:
                by_op[op] += ms / calls
                by_kernel[f"{op} {kernel}"] += ms / calls
    top = sorted(by_kernel.items(), key=lambda kv: -kv[1])[:15]
    return {"wall_p50_ms": float(np.median(walls)), "layers_p50_ms": float(np.median(sums)),
            "layers_mean_ms": float(sum(by_op.values())), "calls": calls,
            "by_op": dict(sorted(by_op.items(), key=lambda kv: -kv[1])), "kernels": dict(top)}


def measure_layers(checkpoint: Path, repository: Path, *, data: Path | None = None, images: int = 4, runs: int = 5,
                   paths=PATHS, threads: int | None = None, progress: bool = True) -> dict:
    """One row per path in ``paths``: its profile (:func:`profile_path`) or why it cannot run here."""
    from cxr.contract import Step
    from cxr.export.paths import runtime_error
    from cxr.machine import cpu_info, isa_line
    from cxr.serving.paths import BY_NAME
    from cxr.training.checkpoint import load_checkpoint

    if images < 1 or runs < 1:
        raise InvalidOptionError(f"need --images >= 1 and --runs >= 1, got {images} and {runs}")
    unknown = sorted(set(paths) - set(PATHS))
    if unknown:
        raise InvalidOptionError(f"unknown path(s) {', '.join(unknown)} for per-layer times; choose from {', '.join(PATHS)}")
    folder = Path(repository) / Step.DETECTOR / "1"
    if not folder.is_dir():
        raise MissingFileError(f"no detector in {repository} ({folder} is missing): export the checkpoint first "
                               "(cxr export onnx --checkpoint ... --repository ...)")
    ckpt = load_checkpoint(checkpoint)
    xs, source = _inputs(ckpt, data, images)
    cpu = cpu_info()
    isa = isa_line(cpu)
    rows = []
    for name in paths:
        path = BY_NAME[name]
        why = path.available(folder, isa)
        if why is not None:
            rows.append({"name": name, "precision": path.precision, "status": "unavailable", "reason": why})
            continue
        try:
            row = {"name": name, "precision": path.precision, "status": "ok",
                   **profile_path(path.detector(folder, threads=threads, profile=True), xs, runs)}
        except Exception as exc:  # noqa: BLE001 - OpenVINO refused this file on this CPU: say so, profile the others
            rows.append({"name": name, "precision": path.precision, "status": "unavailable",
                         "reason": f"could not run here: {runtime_error(exc)}"})
            continue
        rows.append(row)
        if progress:
            print(f"{name}: {row['wall_p50_ms']:.1f} ms per study (layers {row['layers_p50_ms']:.1f})", flush=True)
    return {"checkpoint": str(checkpoint), "repository": str(repository), "model": ckpt.model_config.arch,
            "size": ckpt.preprocess.size, "studies": len(xs), "source": source, "runs": runs, "threads": threads,
            "cpu": cpu["model"], "isa": isa, "rows": rows,
            "load_average": [round(v, 2) for v in os.getloadavg()]}


def _ops(rows: list[dict]) -> list[str]:
    """The op types worth a row: the largest over all paths first."""
    ops: dict[str, float] = defaultdict(float)
    for r in rows:
        for op, ms in r["by_op"].items():
            ops[op] = max(ops[op], ms)
    return sorted(ops, key=lambda op: -ops[op])[:SHOWN_OPS]


def table(result: dict) -> str:
    """Markdown: ms per study by op type (columns: paths), then each path's top kernels."""
    ok = [r for r in result["rows"] if r["status"] == "ok"]
    lines = [f"{result['model']} @{result['size']}, {result['studies']} studies ({result['source']}) x {result['runs']} "
             f"runs, batch 1, OpenVINO PERF_COUNT; {result['cpu']} ({result['isa']}), load average {result['load_average']}",
             ""]
    lines += [f"- {r['name']}: unavailable: {r['reason']}" for r in result["rows"] if r["status"] != "ok"]
    if not ok:
        return "\n".join(lines)
    base = ok[0]
    lines += ["", "| ms per study | " + " | ".join(r["name"] for r in ok) + " |", "|---|" + "---:|" * len(ok)]
    lines.append("| **wall p50** | " + " | ".join(f"**{r['wall_p50_ms']:.1f}**" for r in ok) + " |")
    lines.append(f"| sum of layers (mean), × {base['name']} | "
                 + " | ".join(f"{r['layers_mean_ms']:.1f} ({base['layers_mean_ms'] / r['layers_mean_ms']:.2f}×)" for r in ok) + " |")
    shown = _ops(ok)
    for op in shown:
        lines.append(f"| {op} | " + " | ".join(f"{r['by_op'].get(op, 0.0):.2f}" for r in ok) + " |")
    lines.append("| other | " + " | ".join(f"{sum(v for k, v in r['by_op'].items() if k not in shown):.2f}" for r in ok) + " |")
    for r in ok:
        lines += ["", f"{r['name']}: top kernels (op type, kernel: ms per study)"]
        lines += [f"- {k}: {v:.2f}" for k, v in r["kernels"].items()]
    return "\n".join(lines)


def plot(result: dict, out: Path) -> Path | None:
    """One horizontal bar per path, stacked by op type (the same colour per op type); None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    ok = [r for r in result["rows"] if r["status"] == "ok"]
    if not ok:
        return None
    shown = _ops(ok)
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.7 * len(ok)), dpi=110)
    colours = plt.get_cmap("tab20").colors
    for i, r in enumerate(ok):
        left = 0.0
        parts = [(op, r["by_op"].get(op, 0.0)) for op in shown]
        parts.append(("other", sum(v for k, v in r["by_op"].items() if k not in shown)))
        for j, (op, ms) in enumerate(parts):
            ax.barh(i, ms, left=left, color=colours[j % len(colours)], edgecolor="white", label=op if i == 0 else None)
            left += ms
        ax.text(left, i, f" {left:.1f} ms", va="center", fontsize=8)
    ax.set_yticks(range(len(ok)), [r["name"] for r in ok])
    ax.invert_yaxis()
    ax.set_xlabel("ms per study, summed over the layers OpenVINO executed (PERF_COUNT)")
    ax.set_title(f"{result['model']} @{result['size']} — {result['isa']}", fontsize=9)
    ax.legend(ncol=4, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.35 if len(ok) < 3 else -0.2), frameon=False)
    fig.tight_layout()
    path = out / "layers.png"
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


DESCRIPTION = (
    "Per-layer times of each OpenVINO path (FP32, BF16, INT8, INT8-BF16 where this CPU and the repository have "
    "them) on held-out studies, preprocessed as served: ms per study by op type and by kernel, from OpenVINO's "
    "PERF_COUNT. Says which layers low precision does not shrink. Writes OUT/layers.json, layers.md, layers.png.")


def add_arguments(p) -> None:
    p.add_argument("--checkpoint", type=Path, required=True, metavar="CKPT", help="the trained checkpoint")
    p.add_argument("--repository", type=Path, required=True, metavar="DIR", help="the model repository exported from it")
    p.add_argument("--data", type=Path, default=None, metavar="DIR",
                   help="NIH-layout data: its test split is run (default: synthetic unseen studies)")
    p.add_argument("--images", type=int, default=4, metavar="N", help="studies per pass (default 4)")
    p.add_argument("--runs", type=int, default=5, metavar="R", help="timed passes over the studies (default 5)")
    p.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated (default {','.join(PATHS)})")
    p.add_argument("--threads", type=int, default=None, metavar="T", help="OpenVINO inference threads (default: all cores)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for layers.json, layers.md, layers.png")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def cmd_layers(args) -> int:
    result = measure_layers(args.checkpoint, args.repository, data=args.data, images=args.images, runs=args.runs,
                            paths=tuple(p.strip() for p in args.paths.split(",") if p.strip()), threads=args.threads,
                            progress=not args.json)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "layers.json").write_text(json.dumps(result, indent=1))
    (args.out / "layers.md").write_text(table(result) + "\n")
    png = plot(result, args.out)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(table(result))
        print(f"\nwrote {args.out / 'layers.json'}, {args.out / 'layers.md'}" + (f", {png}" if png else ""))
    return 0
