"""``cxr bench explain``: what an explanation costs -- ms per explained study and detection-equivalents.

The repository is served by the embedded tritonserver (as ``cxr bench masks --triton`` serves it) and
the same held-out studies are asked, one at a time over gRPC through the SDK, first of ``cxr_detector``
(:meth:`~cxr.client.DetectorClient.predict`) and then of ``cxr_explain``
(:meth:`~cxr.client.DetectorClient.explain`) at the served default mask count (the ``saliency``
parameter of ``cxr_explain``'s config, :class:`cxr.saliency.SaliencyConfig`) or ``--masks``.  The row
gives the medians of both, their ratio (explain / detect: the explanation's cost in detections of the
same studies; issue 23 aims below 20 at the default setting), and the batch sizes the ``detector`` step
actually ran during the explained requests, from Triton's model statistics (the difference of
``detector``'s ``batch_stats``, ``inference_count`` and ``execution_count`` before and after them).
One untimed predict and explain go first (the explain one makes and caches the masks).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from cxr.errors import InvalidOptionError, MissingFileError


def served_saliency(stats_client) -> dict:
    """``cxr_explain``'s defaults as the server holds them (its config's ``saliency`` parameter)."""
    from cxr.contract import EXPLAIN, ConfigKey

    config = stats_client.get_model_config(EXPLAIN, as_json=True)
    config = config.get("config", config)
    return json.loads(config["parameters"][str(ConfigKey.SALIENCY)]["string_value"])


def detector_stats(stats_client) -> dict:
    """The ``detector`` step's counters: inferences, executions and executions per batch size."""
    from cxr.contract import Step

    stats = stats_client.get_inference_statistics(model_name=str(Step.DETECTOR), as_json=True)["model_stats"]
    out = {"inference_count": 0, "execution_count": 0, "batches": {}}
    for model in stats:
        out["inference_count"] += int(model.get("inference_count", 0))
        out["execution_count"] += int(model.get("execution_count", 0))
        for b in model.get("batch_stats", []):
            size = int(b["batch_size"])
            out["batches"][size] = out["batches"].get(size, 0) + int(b["compute_infer"]["count"])
    return out


def settled_stats(stats_client, *, wait_s: float = 0.25, tries: int = 20) -> dict:
    """:func:`detector_stats` once two reads ``wait_s`` apart agree: Triton may count a request's executions
    just after its response has reached the client, which would put them on the wrong side of a difference."""
    last = detector_stats(stats_client)
    for _ in range(tries):
        time.sleep(wait_s)
        now = detector_stats(stats_client)
        if now == last:
            break
        last = now
    return last


def stats_delta(before: dict, after: dict) -> dict:
    """What the detector ran between two :func:`detector_stats`: counts, the batch sizes seen and their mean."""
    inferences = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    batches = {size: n - before["batches"].get(size, 0) for size, n in sorted(after["batches"].items())}
    batches = {size: n for size, n in batches.items() if n > 0}
    return {"detector_inferences": inferences, "detector_executions": executions,
            "batch_mean": inferences / executions if executions else None,
            "batch_min": min(batches) if batches else None, "batch_max": max(batches) if batches else None,
            "batch_sizes": {str(k): v for k, v in batches.items()}}


def _timed(fn, films: list[bytes], **kwargs) -> tuple[list[float], list]:
    times, results = [], []
    for data in films:
        t0 = time.perf_counter()
        results.append(fn(data, **kwargs))
        times.append((time.perf_counter() - t0) * 1e3)
    return times, results


def served_explain_row(url: str, films: list[bytes], *, masks: int | None, timeout_s: float = 3600.0) -> dict:
    """The explanation row against the server at ``url``: medians of predict and explain over ``films``, their
    ratio, and the detector's batches during the explained requests."""
    import tritonclient.grpc as grpcclient

    from cxr.client import DetectorClient

    stats_client = grpcclient.InferenceServerClient(url=url)
    try:
        defaults = served_saliency(stats_client)
        n_masks = int(masks if masks is not None else defaults["masks"])
        with DetectorClient(url=url, timeout_s=timeout_s) as client:
            client.predict(films[0])  # untimed: the first request of each model
            client.explain(films[0], masks=n_masks)  # untimed: makes and caches the masks
            detect_ms, _ = _timed(client.predict, films)
            before = settled_stats(stats_client)
            explain_ms, results = _timed(client.explain, films, masks=n_masks)
            after = settled_stats(stats_client)
    finally:
        stats_client.close()
    detect_p50, explain_p50 = float(np.median(detect_ms)), float(np.median(explain_ms))
    return {"name": "triton", "status": "ok", "studies": len(films), "masks": n_masks,
            "default_masks": int(defaults["masks"]), "grid": int(defaults["grid"]),
            "detections": [len(r.detections) for r in results],
            "detect_p50_ms": detect_p50, "explain_p50_ms": explain_p50,
            "explain_max_ms": float(max(explain_ms)),
            "detection_equivalents": explain_p50 / detect_p50,
            "per_study_ratio_median": float(np.median(np.array(explain_ms) / np.array(detect_ms))),
            **stats_delta(before, after)}


def measure_explain(checkpoint: Path, repository: Path, data: Path, *, split: str = "test", images: int = 4,
                    masks: int | None = None, url: str | None = None, log_file: Path | None = None) -> dict:
    """The explanation row for ``repository`` served by the embedded tritonserver (or the server at ``url``)."""
    from cxr.contract import EXPLAIN
    from cxr.export.commands import _studies
    from cxr.machine import cpu_info, isa_line
    from cxr.server.launcher import TritonServer
    from cxr.training.checkpoint import load_checkpoint

    if images < 1 or (masks is not None and masks < 1):
        raise InvalidOptionError(f"need --images >= 1 and --masks >= 1, got {images} and {masks}")
    if url is None and not (Path(repository) / EXPLAIN / "config.pbtxt").is_file():
        raise MissingFileError(f"no {EXPLAIN} in {repository}: export the checkpoint again (cxr export onnx)")
    ckpt = load_checkpoint(checkpoint)
    studies = _studies(data, split, images, ckpt.labelset_name)
    films = [Path(s.path).read_bytes() for s in studies]
    if url is not None:
        row = served_explain_row(url, films, masks=masks)
    else:
        with TritonServer.on_free_ports(repository, log_file=log_file or Path(repository) / "tritonserver-bench-explain.log") as server:
            row = served_explain_row(server.url, films, masks=masks)
    cpu = cpu_info()
    return {"checkpoint": str(checkpoint), "repository": str(repository), "model": ckpt.model_config.arch,
            "size": ckpt.preprocess.size, "split": split, "studies": len(studies), "cpu": cpu["model"],
            "isa": isa_line(cpu), "rows": [row], "load_average": [round(v, 2) for v in os.getloadavg()]}


def table(result: dict) -> str:
    """The row as a Markdown table, with the machine above it."""
    lines = [f"{result['model']} @{result['size']}, {result['studies']} {result['split']} studies, one at a time over "
             f"gRPC (SDK); {result['cpu']} ({result['isa']}), load average {result['load_average']}",
             "", "| served | masks (default) | detect p50 ms | explain p50 ms | detection-equivalents "
             "| per-study ratio median | detector batch sizes (executions) | mean batch |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        sizes = ", ".join(f"{k}: {v}" for k, v in r["batch_sizes"].items()) or "none"
        mean = "n/a" if r["batch_mean"] is None else f"{r['batch_mean']:.2f}"
        lines.append(f"| cxr_explain vs cxr_detector | {r['masks']} ({r['default_masks']}) | {r['detect_p50_ms']:.1f} | "
                     f"{r['explain_p50_ms']:.1f} | {r['detection_equivalents']:.1f} | {r['per_study_ratio_median']:.1f} | "
                     f"{sizes} | {mean} |")
    return "\n".join(lines)


DESCRIPTION = (
    "What an explanation costs: the repository served by the embedded tritonserver, the same studies asked one at "
    "a time over gRPC of cxr_detector (predict) and cxr_explain (explain, at the served default mask count or "
    "--masks); the medians, explain / detect as detection-equivalents, and the batch sizes the detector step ran "
    "during the explained requests (Triton's model statistics). Writes OUT/explain.json and explain.md.")


def add_arguments(p) -> None:
    p.add_argument("--checkpoint", type=Path, required=True, metavar="CKPT", help="the checkpoint the repository serves")
    p.add_argument("--repository", type=Path, required=True, metavar="DIR", help="the model repository exported from it")
    p.add_argument("--data", type=Path, required=True, metavar="DIR", help="NIH-layout data")
    p.add_argument("--split", default="test", help="split to run (default test)")
    p.add_argument("--images", type=int, default=4, metavar="N", help="studies to run (default 4)")
    p.add_argument("--masks", type=int, default=None, metavar="M",
                   help="D-RISE masked passes per study (default: cxr_explain's served default)")
    p.add_argument("--url", default=None, metavar="HOST:PORT",
                   help="measure a running server instead of starting the embedded one")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for explain.json and explain.md")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def cmd_explain(args) -> int:
    args.out.mkdir(parents=True, exist_ok=True)
    result = measure_explain(args.checkpoint, args.repository, args.data, split=args.split, images=args.images,
                             masks=args.masks, url=args.url, log_file=args.out / "tritonserver.log")
    (args.out / "explain.json").write_text(json.dumps(result, indent=1, default=str))
    (args.out / "explain.md").write_text(table(result) + "\n")
    if args.json:
        print(json.dumps(result, indent=1, default=str))
    else:
        print(table(result))
        print(f"\nwrote {args.out / 'explain.json'}, {args.out / 'explain.md'}")
    return 0
