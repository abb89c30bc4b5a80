"""report.md and report.png of a ``cxr bench`` report (:mod:`cxr.benchmarks.report` builds the JSON)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from cxr.benchmarks.report import STEPS, UNTRAINED, met_word
from cxr.benchmarks.vocab import BenchStatus


def _f(v, fmt: str = ".1f", none: str = "–") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return none
    return format(v, fmt) if isinstance(v, (int, float)) else str(v)


def _pct(v) -> str:
    return _f(None if v is None else 100 * v, ".0f") + ("%" if v is not None else "")


def _acc(row: Mapping, key: str, fmt: str) -> str:
    return UNTRAINED if row.get("accuracy") == UNTRAINED and row["status"] != BenchStatus.UNAVAILABLE else _f(row[key], fmt)


def _status(r: Mapping) -> str:
    status = r["status"] if not r.get("reason") else f"{r['status']} ({r['reason']})"
    return status.replace("|", "/")


def joined_table(section: Mapping) -> str:
    """One model's table: backend | status | size | mAP | Δ | p50 | p95 | images/s | model ms | GFLOP/s | % of peak."""
    lines = ["| backend | status | size MB | mAP@0.5 | Δ vs PyTorch | p50 ms | p95 ms | images/s | model ms | "
             "model GFLOP/s | % of peak |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in section["backends"]:
        lines.append(f"| {r['name']} | {_status(r)} | {_f(r['size_mb'])} | {_acc(r, 'map50', '.4f')} | "
                     f"{_acc(r, 'delta_map50', '+.4f')} | {_f(r['p50_ms'])} | {_f(r['p95_ms'])} | {_f(r['images_per_s'])} | "
                     f"{_f(r['model_ms_per_image'])} | {_f(r['achieved_gflops'], '.0f')} | "
                     f"{_peak_cell(r)} |")
    return "\n".join(lines)


def _peak_cell(row: Mapping) -> str:
    """A backend's model GFLOP/s as a share of the measured peak of its precision, e.g. ``38 % int8``."""
    peak = row.get("peak") or {}
    return _pct(row["fraction_of_peak"]) + (" " + peak["precision"] if peak and row["fraction_of_peak"] else "")


def summary_table(report: Mapping) -> str:
    """Every model's rows in one table (what the README shows), unavailable rows left out."""
    lines = ["| model | backend | p50 ms | images/s | model ms | model GFLOP/s | % of peak | mAP@0.5 | Δ vs PyTorch |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for section in report["models"]:
        for r in section["backends"]:
            if r["status"] == BenchStatus.UNAVAILABLE:
                continue
            name = r["name"] + (" (failed parity)" if r["status"] == BenchStatus.FAILED_PARITY else "")
            lines.append(f"| {section['name']} | {name} | {_f(r['p50_ms'])} | {_f(r['images_per_s'])} | "
                         f"{_f(r['model_ms_per_image'])} | {_f(r['achieved_gflops'], '.0f')} | "
                         f"{_peak_cell(r)} | "
                         f"{_acc(r, 'map50', '.3f')} | {_acc(r, 'delta_map50', '+.3f')} |")
    return "\n".join(lines)


def steps_table(serving: Mapping) -> str:
    """Triton's split at concurrency 1, as perf_analyzer prints it (mean ms per request)."""
    steps = serving.get("steps") or {}
    if not steps:
        return "_no Triton statistics (served backends not run)_"
    lines = ["| model | requests | mean batch | request ms | queue | compute input | compute infer | compute output | overhead |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name in STEPS:
        s = steps.get(name)
        if s is None:
            continue
        lines.append(f"| {name} | {s['requests']} | {_f(s['mean_batch'], '.2f')} | {_f(s['request_ms'], '.2f')} | "
                     f"{_f(s['queue_ms'], '.2f')} | {_f(s['compute_input_ms'], '.2f')} | {_f(s['compute_infer_ms'], '.2f')} | "
                     f"{_f(s['compute_output_ms'], '.2f')} | {_f(s['overhead_ms'], '.2f')} |")
    return "\n".join(lines)


def parity_table(section: Mapping) -> str:
    rows = [r for r in section["backends"] if r.get("parity")]
    if not rows:
        return f"_{'the model is untrained: parity is judged on a trained model' if section.get('trained') is False else 'parity not run'}_"
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


def sweep_table(name: str, points: Sequence[Mapping]) -> str:
    lines = [f"#### {name}", "", "| concurrency | batch | requests | p50 ms | p95 ms | p99 ms | images/s | model ms/image | errors |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for p in points:
        lines.append(f"| {p['concurrency']} | {p['batch']} | {p['requests']} | {_f(p['p50_ms'])} | {_f(p['p95_ms'])} | "
                     f"{_f(p['p99_ms'])} | {_f(p['images_per_s'])} | {_f(p['model_ms_per_image'], '.2f')} | {p['errors']} |")
    return "\n".join(lines)


def peaks_table(peaks: Mapping) -> str:
    lines = ["| precision | measured GEMM peak | native instructions | how |", "| --- | ---: | --- | --- |"]
    for key, label in (("fp32", "FP32 GFLOP/s"), ("bf16", "BF16 GFLOP/s"), ("int8", "INT8 GOP/s"), ("cuda_fp16", "GPU FP16 GFLOP/s")):
        p = peaks.get(key)
        if p:
            native = {True: "yes", False: "no (emulated)", None: "–"}[p.get("native")]
            detail = ", ".join(f"{k} {_f(p[k], '.0f')}" for k in ("numpy", "torch", "torch_int_mm", "ort_matmul_integer") if p.get(k))
            lines.append(f"| {label} | {_f(p.get('gflops'), '.0f')} | {native} | {p.get('how', '')}{' (' + detail + ')' if detail else ''} |")
    return "\n".join(lines)


def isa_header(env: Mapping) -> str:
    cpu, gpu = env["cpu"], env.get("gpu")
    load = env.get("load_average")
    load_end = env.get("load_average_end")
    # Others' work on the cores while we measured: a quarter of a core on average already shows.
    busy = max([v[0] for v in (load, load_end) if v] or [0.0]) >= 0.25 * (cpu.get("usable_cores") or 1)
    return (f"{cpu['model']}, {cpu['usable_cores']} usable cores; **ISA: {env.get('isa', '?')}** "
            f"(SIMD: {', '.join(cpu['simd']) or 'none'}); GPU: "
            f"{gpu['name'] + ' (driver ' + gpu['driver'] + ')' if gpu else 'none'}; load average "
            f"{' / '.join(map(str, load)) if load else '?'} at the start"
            + (f", {' / '.join(map(str, load_end))} at the end" if load_end else "")
            + (" (other work was running: the figures are provisional)." if busy else "."))


def targets_table(targets: Sequence[Mapping]) -> str:
    """The targets as a markdown table; a figure measured with no target on this CPU says "reported"."""
    lines = ["| target | value | need | met |", "| --- | ---: | --- | --- |"]
    for t in targets:
        lines.append(f"| {t['target'].replace('|', chr(92) + '|')} | {_f(t['value'], '.3f')} | {t['need']} | "
                     f"{met_word(t, 'yes', 'no')} |")
    return "\n".join(lines)


def _section_md(section: Mapping) -> list[str]:
    serving = section["serving"]
    derived = [
        f"- model: {_f(section.get('model_gflops_per_image'), '.1f')} GFLOP per image (torch.utils.flop_counter, serving graph, "
        "batch 1); % of peak divides model-only GFLOP/s by the measured GEMM peak of the backend's precision",
        f"- serving overhead at concurrency 1: Triton p50 − in-process {serving.get('twin') or 'onnx'} p50 (what the server's "
        f"detector runs) = **{_f(serving['overhead_ms'])} ms** "
        f"(×{_f(serving['overhead_ratio'], '.2f')}); shared-memory pixels: {_f(serving['overhead_shm_ms'])} ms; "
        f"server side (ensemble) {_f(serving['server_ms'])} ms, client + gRPC {_f(serving['client_ms'])} ms",
    ]
    for r in section["backends"]:
        if r["status"] != BenchStatus.UNAVAILABLE and r["speedup_vs_pytorch"] is not None:
            derived.append(f"- {r['name']}: ×{_f(r['speedup_vs_pytorch'], '.2f')} vs PyTorch (p50)")
    tgt = targets_table(section["targets"]).splitlines()
    training = section.get("training")
    budget = ""
    if training:
        budget = (f" Training: {training.get('epochs_run')} epochs, {training.get('iterations')} iterations, budget "
                  f"{_f(training.get('max_minutes'), 'g')} min, val mAP@0.5 {_f(training.get('val_map50'), '.3f')}.")
    parts = [f"## {section['name']} ({'trained' if section.get('trained') else UNTRAINED})", "",
             f"{section.get('source', '')}; {section['images']}.{budget}", "", joined_table(section), "", "### Derived", "",
             *derived, "", "### Triton per-step split (concurrency 1, mean per request)", "", steps_table(serving), "",
             "### Targets", "", *tgt, "", "### Parity against PyTorch eager", "", parity_table(section), "", "### Sweeps", ""]
    for name, pts in section["sweeps"].items():
        parts += [sweep_table(name, pts), ""]
    return parts


def render_markdown(report: Mapping) -> str:
    env = report["env"]
    libs = ", ".join(f"{k} {v}" for k, v in env["libraries"].items() if v)
    parts = [
        "# cxr bench report", "", isa_header(env), "", f"Libraries: {libs}.", "",
        "p50/p95 at concurrency 1, batch 1 (one study, end to end: decode + preprocess + model + postprocess); "
        "images/s is the best point of the sweep; model ms is the detector alone (in process: timed around the "
        "detector call; Triton: the detector model's compute_infer statistics).", "",
        "## Measured GEMM peaks", "", peaks_table(env.get("gemm_peaks") or {}), "",
        "## Every model", "", summary_table(report), "",
    ]
    for section in report["models"]:
        parts += _section_md(section)
    perf = report.get("perf_analyzer")
    if perf:
        parts += ["## Reproduce with perf_analyzer", "",
                  "From the NGC client container (`nvcr.io/nvidia/tritonserver:<version>-py3-sdk`), against the server of "
                  f"the model the files were written for, next to {', '.join('`' + f + '`' for f in perf['files'].values())}:",
                  "", "```bash", *perf["commands"], "```", ""]
    return "\n".join(parts)


def plot(report: Mapping, path: Path) -> Path | None:
    """Latency (p50) vs throughput per backend over the concurrency sweep, one panel per model; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    sections = report["models"] or [{"name": "no model", "sweeps": {}}]
    fig, axes = plt.subplots(1, len(sections), figsize=(7 * len(sections), 4.5), dpi=110, squeeze=False)
    for ax, section in zip(axes[0], sections):
        for name, pts in section["sweeps"].items():
            b1 = [p for p in pts if p["batch"] == 1 and p["images_per_s"] and p["p50_ms"]]
            if not b1:
                continue
            line, = ax.plot([p["images_per_s"] for p in b1], [p["p50_ms"] for p in b1], marker="o", label=name)
            for p in b1:
                ax.annotate(f"c{p['concurrency']}", (p["images_per_s"], p["p50_ms"]), fontsize=7,
                            textcoords="offset points", xytext=(3, 3))
            for p in (p for p in pts if p["batch"] > 1 and p["images_per_s"] and p["p50_ms"]):
                ax.plot([p["images_per_s"]], [p["p50_ms"]], marker="s", color=line.get_color(), linestyle="none")
        ax.set_xlabel("throughput (images/s)")
        ax.set_ylabel("p50 latency per request (ms)")
        ax.set_yscale("log")
        ax.set_title(f"{section['name']}: o concurrency sweep at batch 1, s larger batch", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
