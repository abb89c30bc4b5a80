"""One report from the latency sweep and the parity run: report.json, report.md, report.png.

The joined table follows Ultralytics' benchmark table: one row per backend with
status (``ok``, ``failed-parity``, ``unavailable`` + reason), artifact size,
mAP@0.5 and its delta against PyTorch, single-study latency (concurrency 1,
batch 1: what one radiologist waits for) and the best throughput of the sweep (what
a platform engineer sizes hardware with).  Derived figures: serving overhead
(Triton p50 / in-process ORT p50 on the same ONNX, concurrency 1), speed-up over
PyTorch eager, achieved GFLOP/s against the measured matmul peak, and the issue's
targets, each marked met or not.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from cxr.benchmarks.backends import BACKENDS, Backend, Unavailable
from cxr.benchmarks.latency import best_throughput, headline
from cxr.benchmarks.parity import BackendParity
from cxr.benchmarks.stats import PointStats
from cxr.contract import BenchBackend as B

SCHEMA = "cxr-bench/1"
STATUSES = ("ok", "failed-parity", "unavailable")
# Keys every entry of report["backends"] has (tests and downstream tools rely on them).
BACKEND_KEYS = ("name", "status", "reason", "precision", "size_mb", "map50", "delta_map50", "froc_at_1fp",
                "p50_ms", "p95_ms", "p99_ms", "images_per_s", "images_per_s_c1", "model_ms_per_image",
                "speedup_vs_pytorch", "achieved_gflops", "fraction_of_peak", "detail")


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b not in (None, 0) else None


def backend_row(backend: Backend | Unavailable, points: Sequence[PointStats] | None, parity: BackendParity | None,
                *, flops: float | None, peak_gflops: float | None) -> dict:
    """One entry of ``report["backends"]`` (see :data:`BACKEND_KEYS`)."""
    row = dict.fromkeys(BACKEND_KEYS)
    row.update(name=backend.name, status=backend.status, reason=getattr(backend, "reason", None))
    if isinstance(backend, Unavailable):
        return row
    row.update(precision=backend.precision, size_mb=backend.size_mb, detail=backend.detail)
    head, best = headline(points or []), best_throughput(points or [])
    if head is not None:
        row.update(p50_ms=head.p50_ms, p95_ms=head.p95_ms, p99_ms=head.p99_ms, images_per_s_c1=head.images_per_s,
                   model_ms_per_image=head.model_ms_per_image)
        if head.errors:
            row["reason"] = f"{head.errors} failed requests: {head.extra.get('first_error', '')}"
    if best is not None:
        row["images_per_s"] = best.images_per_s
        row["best_point"] = {"concurrency": best.concurrency, "batch": best.batch}
    if flops and row["model_ms_per_image"]:
        row["achieved_gflops"] = flops / (row["model_ms_per_image"] / 1000.0) / 1e9
        row["fraction_of_peak"] = _ratio(row["achieved_gflops"], peak_gflops)
    if parity is not None:
        row.update(map50=parity.map50, delta_map50=parity.delta_map50, froc_at_1fp=parity.froc_at_1fp, parity=parity.to_dict())
        if not parity.passed:
            row["status"] = "failed-parity"
            row["reason"] = "; ".join(parity.failures) or "outside the export tolerance"
    return row


def _point(points: Mapping[str, Sequence[PointStats]], name: str, concurrency: int, batch: int = 1) -> PointStats | None:
    return next((p for p in points.get(name, []) if p.concurrency == concurrency and p.batch == batch), None)


def targets(rows: Mapping[str, dict], points: Mapping[str, Sequence[PointStats]], overhead: float | None) -> list[dict]:
    """The issue's targets with the measured value and whether each is met (None: not measurable here)."""
    def get(name: str, key: str):
        return rows.get(name, {}).get(key)

    tri4, ort1 = _point(points, B.TRITON, 4), _point(points, B.ONNX, 1)
    onnx_speedup = _ratio(get(B.PYTORCH, "p50_ms"), get(B.ONNX, "p50_ms"))
    int8_speedup = _ratio(get(B.ONNX, "p50_ms"), get(B.ONNX_INT8, "p50_ms"))
    int8_delta = get(B.ONNX_INT8, "delta_map50")
    measured = [r for r in rows.values() if r["status"] != "unavailable" and r.get("parity") is not None]
    out = [
        ("serving overhead (Triton p50 / ORT p50, concurrency 1)", overhead, "<= 1.15", lambda v: v <= 1.15),
        ("Triton images/s at concurrency 4 / ORT images/s at concurrency 1",
         _ratio(tri4 and tri4.images_per_s, ort1 and ort1.images_per_s), ">= 1.0", lambda v: v >= 1.0),
        ("ORT FP32 speed-up over PyTorch eager (p50)", onnx_speedup, ">= 1.3", lambda v: v >= 1.3),
        ("ORT INT8 speed-up over ORT FP32 (p50)", int8_speedup, ">= 2.0", lambda v: v >= 2.0),
        ("ORT INT8 |delta mAP@0.5|", None if int8_delta is None else abs(int8_delta), "<= 0.01", lambda v: v <= 0.01),
        ("backends within export parity tolerance", f"{sum(r['status'] == 'ok' for r in measured)}/{len(measured)}" if measured else None,
         "all", lambda v: all(r["status"] == "ok" for r in measured)),
    ]
    return [{"target": t, "value": v, "need": need, "met": None if v is None else bool(ok(v))} for t, v, need, ok in out]


def build_report(*, env: dict, backends: Sequence[Backend | Unavailable], points: Mapping[str, Sequence[PointStats]],
                 parity: Mapping[str, BackendParity] | None, flops: float | None, peak: dict | None,
                 images: str, config: dict) -> dict:
    """The report.json object."""
    peak = peak or {}
    # TensorRT runs on the GPU: its ceiling is the GPU's fp16 matmul, not the CPU's.
    rows = {b.name: backend_row(b, points.get(b.name), (parity or {}).get(b.name), flops=flops,
                                peak_gflops=peak.get("cuda_fp16_gflops" if b.name == B.TENSORRT else "peak_gflops"))
            for b in backends}
    base = rows.get(B.PYTORCH, {}).get("p50_ms")
    for row in rows.values():
        row["speedup_vs_pytorch"] = _ratio(base, row["p50_ms"])
    overhead = _ratio(rows.get(B.TRITON, {}).get("p50_ms"), rows.get(B.ONNX, {}).get("p50_ms"))
    ordered = [rows[n] for n in BACKENDS if n in rows]
    return {
        "schema": SCHEMA,
        "env": env,
        "images": images,
        "config": config,
        "model_gflops_per_image": None if flops is None else flops / 1e9,
        "matmul_peak": peak,
        "serving_overhead": overhead,
        "serving_overhead_shm": _ratio(rows.get(B.TRITON_SHM, {}).get("p50_ms"), rows.get(B.ONNX, {}).get("p50_ms")),
        "backends": ordered,
        "sweeps": {name: [p.to_dict() for p in pts] for name, pts in points.items()},
        "targets": targets(rows, points, overhead),
    }


# ----------------------------------------------------------------------------- markdown


def _f(v, fmt: str = ".1f", none: str = "–") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return none
    return format(v, fmt) if isinstance(v, (int, float)) else str(v)


def joined_table(report: Mapping) -> str:
    """The headline table: backend | status | size MB | mAP@0.5 | Δ vs PyTorch | p50 ms | p95 ms | images/s."""
    lines = ["| backend | status | size MB | mAP@0.5 | Δ vs PyTorch | p50 ms | p95 ms | images/s |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in report["backends"]:
        status = r["status"] if not r.get("reason") else f"{r['status']} ({r['reason']})"
        lines.append(f"| {r['name']} | {status.replace('|', '/')} | {_f(r['size_mb'])} | {_f(r['map50'], '.4f')} | "
                     f"{_f(r['delta_map50'], '+.4f')} | {_f(r['p50_ms'])} | {_f(r['p95_ms'])} | {_f(r['images_per_s'])} |")
    return "\n".join(lines)


def sweep_table(name: str, points: Sequence[Mapping]) -> str:
    lines = [f"#### {name}", "", "| concurrency | batch | requests | p50 ms | p95 ms | p99 ms | images/s | model ms/image | errors |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for p in points:
        lines.append(f"| {p['concurrency']} | {p['batch']} | {p['requests']} | {_f(p['p50_ms'])} | {_f(p['p95_ms'])} | "
                     f"{_f(p['p99_ms'])} | {_f(p['images_per_s'])} | {_f(p['model_ms_per_image'], '.2f')} | {p['errors']} |")
    return "\n".join(lines)


def parity_table(report: Mapping) -> str:
    rows = [r for r in report["backends"] if r.get("parity")]
    if not rows:
        return "_parity not run_"
    lines = ["| backend | images | tolerance | match rate | max \\|Δscore\\| | median \\|Δscore\\| | max box dev px | FROC@1FP | result |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        p = r["parity"]
        result = "pass" if p["passed"] else "FAIL: " + "; ".join(p["failures"])
        lines.append(f"| {r['name']} | {p['n_images']} | {p['tolerance']} | {_f(p['match_rate'], '.4f')} | "
                     f"{_f(p['max_score_delta'], '.2e')} | {_f(p['median_score_delta'], '.2e')} | {_f(p['max_box_dev_px'], '.3f')} | "
                     f"{_f(p['froc_at_1fp'], '.3f')} | {result} |")
    classes = sorted({c for r in rows for c in r["parity"]["per_class_ap50"]})
    if classes:
        lines += ["", "Per-class AP@0.5 (– = no ground truth of that class in these images):", "",
                  "| backend | " + " | ".join(classes) + " |", "| --- |" + " ---: |" * len(classes)]
        for r in rows:
            ap = r["parity"]["per_class_ap50"]
            lines.append(f"| {r['name']} | " + " | ".join(_f(ap.get(c), ".3f") for c in classes) + " |")
    return "\n".join(lines)


def render_markdown(report: Mapping) -> str:
    env, cpu = report["env"], report["env"]["cpu"]
    gpu = env.get("gpu")
    libs = ", ".join(f"{k} {v}" for k, v in env["libraries"].items() if v)
    peak = report.get("matmul_peak") or {}
    derived = [
        f"- serving overhead (Triton p50 ÷ in-process ORT p50, concurrency 1): **{_f(report['serving_overhead'], '.2f')}**"
        f" (shared-memory pixels: {_f(report.get('serving_overhead_shm'), '.2f')})",
        f"- model: {_f(report.get('model_gflops_per_image'), '.2f')} GFLOP per image (torch.utils.flop_counter, serving graph, batch 1);"
        f" measured fp32 matmul peak {_f(peak.get('peak_gflops'))} GFLOP/s"
        + (f", GPU fp16 matmul peak {_f(peak['cuda_fp16_gflops'])} GFLOP/s" if peak.get("cuda_fp16_gflops") else ""),
    ]
    for r in report["backends"]:
        if r["status"] != "unavailable":
            derived.append(f"- {r['name']}: x{_f(r['speedup_vs_pytorch'], '.2f')} vs PyTorch (p50); model-only "
                           f"{_f(r['model_ms_per_image'], '.2f')} ms/image = {_f(r['achieved_gflops'])} GFLOP/s "
                           f"({_f(None if r['fraction_of_peak'] is None else 100 * r['fraction_of_peak'])}% of peak)")
    tgt = ["| target | value | need | met |", "| --- | ---: | --- | --- |"]
    for t in report["targets"]:
        met = {True: "yes", False: "no", None: "not measured"}[t["met"]]
        tgt.append(f"| {t['target'].replace('|', chr(92) + '|')} | {_f(t['value'], '.3f')} | {t['need']} | {met} |")
    parts = [
        "# cxr bench report", "",
        f"{cpu['model']}, {cpu['usable_cores']} usable cores (SIMD: {', '.join(cpu['simd']) or 'none'}; "
        f"AVX-512 {'yes' if cpu['avx512'] else 'no'}, VNNI {'yes' if cpu['vnni'] else 'no'}); "
        f"GPU: {gpu['name'] + ' (driver ' + gpu['driver'] + ')' if gpu else 'none'}; input {env.get('input_size')} px; "
        f"{report['images']}.", "", f"Libraries: {libs}.", "",
        "p50/p95 at concurrency 1, batch 1 (one study, end to end: decode + preprocess + model + postprocess); "
        "images/s is the best point of the sweep.", "",
        joined_table(report), "", "## Derived", "", *derived, "", "## Targets", "", *tgt, "",
        "## Parity against PyTorch eager", "", parity_table(report), "", "## Sweeps", "",
        "Closed-loop workers; latency per request (a request carries `batch` images); model ms/image is the detector "
        "alone (in process: timed around the detector call; Triton: the detector model's compute_infer statistics).", "",
    ]
    for name, pts in report["sweeps"].items():
        parts += [sweep_table(name, pts), ""]
    perf = report.get("perf_analyzer")
    if perf:
        parts += ["## Reproduce with perf_analyzer", "",
                  "From the NGC client container (`nvcr.io/nvidia/tritonserver:<version>-py3-sdk`), next to the files "
                  f"{', '.join('`' + f + '`' for f in perf['files'].values())} written with this report:", "", "```bash",
                  *perf["commands"], "```", ""]
    return "\n".join(parts)


# --------------------------------------------------------------------------------- plot


def plot(report: Mapping, path: Path) -> Path | None:
    """Latency (p50) vs throughput per backend over the concurrency sweep; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for name, pts in report["sweeps"].items():
        b1 = [p for p in pts if p["batch"] == 1 and p["images_per_s"] and p["p50_ms"]]
        if b1:
            line, = ax.plot([p["images_per_s"] for p in b1], [p["p50_ms"] for p in b1], marker="o", label=name)
            for p in b1:
                ax.annotate(f"c{p['concurrency']}", (p["images_per_s"], p["p50_ms"]), fontsize=7,
                            textcoords="offset points", xytext=(3, 3))
            for p in (p for p in pts if p["batch"] > 1 and p["images_per_s"] and p["p50_ms"]):
                ax.plot([p["images_per_s"]], [p["p50_ms"]], marker="s", color=line.get_color(), linestyle="none")
                ax.annotate(f"b{p['batch']}", (p["images_per_s"], p["p50_ms"]), fontsize=7, textcoords="offset points", xytext=(3, -9))
    ax.set_xlabel("throughput (images/s)")
    ax.set_ylabel("p50 latency per request (ms)")
    ax.set_yscale("log")
    ax.set_title("latency vs throughput (o: concurrency sweep at batch 1, s: larger batch)", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(report: Mapping, out: Path) -> dict[str, Path]:
    """report.json, report.md and report.png in ``out``; returns what was written."""
    out.mkdir(parents=True, exist_ok=True)
    written = {"json": out / "report.json", "md": out / "report.md"}
    write_json(report, written["json"])
    written["md"].write_text(render_markdown(report))
    png = plot(report, out / "report.png")
    if png is not None:
        written["png"] = png
    return written


def write_json(obj, path: Path) -> Path:
    """Strict JSON (NaN/inf as null, numpy scalars as numbers), indented, at ``path``."""
    path.write_text(json.dumps(_clean(obj), indent=2, default=_json_default, allow_nan=False) + "\n")
    return path


def _clean(obj):
    """NaN/inf -> None recursively: strict JSON has no NaN, and "undefined" is what they mean here."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "ndim", 0) == 0:
        return _clean(obj.item())
    return obj


def _json_default(obj):
    # numpy scalars from metrics; NaN is not valid JSON, so it becomes null upstream of here.
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
