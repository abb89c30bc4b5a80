"""Running ``cxr bench``: every model of a :class:`~cxr.benchmarks.cli.BenchConfig`, one report.

Per model (:mod:`cxr.benchmarks.models`): its held-out studies, its own embedded server
(or ``--url`` for the ``--checkpoint`` model), the latency sweep, parity (trained models
only), FLOPs; the GEMM peaks are measured before the first model and after the last, and
the better of the two is what every section divides by (:func:`cxr.benchmarks.env.merge_peaks`).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import asdict
from pathlib import Path

from cxr.contract import Precision

log = logging.getLogger("cxr.benchmarks")


@contextlib.contextmanager
def _server(cfg, needed: bool, repository: Path, url: str | None):
    """Yield the gRPC URL to use: ``url``, a fresh embedded server's on ``repository``, or None when not needed."""
    if url is not None or not needed:
        yield url, Precision(cfg.served_precision or Precision.FP32), None
        return
    from cxr.server.launcher import TritonServer

    cfg.out.mkdir(parents=True, exist_ok=True)
    log_file = cfg.out / ("tritonserver.log" if repository == cfg.repository else f"tritonserver-{repository.parent.name}.log")
    # The with stops it on every exit path, exceptions and Ctrl-C included.
    # No --served-precision: the server picks its detector path as `cxr serve` does (the fastest that passed parity).
    with TritonServer.on_free_ports(repository, log_file=log_file, precision=cfg.served_precision) as server:
        choice = server.choice
        log.info("served detector path %s: %s", choice.path.name, choice.reason)
        yield server.url, Precision(choice.path.precision), choice


def _triton_version(url: str | None) -> str | None:
    if url is None:
        return None
    try:
        import tritonclient.grpc as grpcclient

        with contextlib.closing(grpcclient.InferenceServerClient(url)) as c:
            return c.get_server_metadata(client_timeout=10).version
    except Exception:  # noqa: BLE001 - informational only
        return None


def _bench_models(cfg, progress: bool):
    """Yield (BenchModel, images, source) for every model of the run; untrained ones are exported on the way."""
    from cxr.benchmarks.inputs import load_images
    from cxr.benchmarks.models import calibration_arrays, prepare_untrained, trained_model, untrained_checkpoint

    if cfg.checkpoint is not None:
        model = trained_model(cfg.checkpoint, cfg.repository)
        images, source = load_images(model.ckpt, data=cfg.data, n=cfg.n_images)
        yield model, images, source
    for arch, size in cfg.untrained_specs():
        ckpt, _ = untrained_checkpoint(arch, size)
        images, source = load_images(ckpt, data=cfg.data, n=cfg.n_images)
        calibration = calibration_arrays(ckpt, [im.data for im in images])
        model = prepare_untrained(arch, size, cfg.out / "models" / f"{arch}@{size}", calibration, progress=progress)
        yield model, images, source


def run_bench(cfg) -> dict:
    """Run the benchmark described by ``cfg``; returns the report (also written to ``cfg.out``)."""
    from cxr.benchmarks.backends import DEFAULT_BACKENDS, IN_PROCESS, open_backends
    from cxr.benchmarks.env import environment, gemm_peaks, load_average, merge_peaks, model_flops
    from cxr.benchmarks.latency import run_latency
    from cxr.benchmarks.parity import run_parity
    from cxr.benchmarks.perf_data import command_lines, write_perf_data
    from cxr.benchmarks.report import build_report, build_section, write_report

    env = environment(extra={"server": "--url" if cfg.url else "embedded"})
    sweep = cfg.sweep()
    # Peaks first, before any model is loaded: they are the ceiling every section divides by.
    peaks = gemm_peaks(repeats=3 if cfg.quick else 5) if cfg.mode in ("all", "latency") else {}
    measured, perf, triton_version = [], None, None
    for model, images, source in _bench_models(cfg, cfg.progress):
        log.info("model %s: %s; images: %s", model.name, model.source, source)
        names = list(cfg.backends or DEFAULT_BACKENDS)
        parity_here = cfg.mode in ("all", "parity") and model.trained
        if parity_here and "pytorch" not in names:
            names.insert(0, "pytorch")  # parity's reference
        served = any(n not in IN_PROCESS for n in names)
        url = cfg.url if model.checkpoint == cfg.checkpoint else None  # --url serves the --checkpoint model
        with _server(cfg, served, model.repository, url) as (served_url, served_precision, served_choice):
            triton_version = triton_version or _triton_version(served_url)
            backends = open_backends(model.ckpt, checkpoint=model.checkpoint, repository=model.repository, url=served_url,
                                     probe=images[0], names=names, served_precision=served_precision,
                                     served_choice=served_choice,
                                     batches=sweep.batches)
            try:
                points, parity, flops = {}, None, None
                if cfg.mode in ("all", "latency"):
                    points = run_latency(backends, images, sweep, progress=cfg.progress)
                    flops = model_flops(model.ckpt)
                if parity_here:
                    parity = run_parity(backends, images, model.ckpt.class_names, progress=cfg.progress)
            finally:
                for b in backends:
                    b.close()
        info = {"name": model.name, "arch": model.arch, "size": model.size, "trained": model.trained,
                "source": model.source, "training": model.training, "checkpoint": str(model.checkpoint),
                "repository": str(model.repository), "artifacts": model.artifacts}
        measured.append(dict(model=info, backends=backends, points=points, parity=parity, flops=flops, images=source))
        if perf is None:  # the ensemble takes the same encoded studies whatever the model: one set of files
            perf = write_perf_data(cfg.out, [im.data for im in images], [im.pixels for im in images if im.pixels is not None])
    env.update(triton_version=triton_version, load_average_end=load_average())
    if peaks:  # again after the models: the better of the two is the ceiling (env.merge_peaks)
        peaks = merge_peaks(peaks, gemm_peaks(repeats=3 if cfg.quick else 5))
    sections = [build_section(**m, peaks=peaks, cpu=env["cpu"]) for m in measured]
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items() if k != "extra"}
    config["sweep"] = {"concurrency": list(sweep.concurrency), "batches": list(sweep.batches), **asdict(sweep.load)}
    report = build_report(env=env, sections=sections, peaks=peaks, config=config)
    report["perf_analyzer"] = {"files": {k: v.name for k, v in perf.items()},
                               "commands": command_lines(pixels=perf["pixels"].name if "pixels" in perf else None)}
    report["written"] = {k: str(v) for k, v in write_report(report, cfg.out).items()}
    return report
