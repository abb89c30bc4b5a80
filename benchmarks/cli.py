"""``cxr bench [latency|parity] --checkpoint CKPT --repository DIR [--url HOST:PORT] [--quick] --out DIR``.

``cxr bench soak --requests N --concurrency C [--model-repository DIR | --url HOST:PORT] --out DIR``
is the bounded soak (:mod:`cxr.benchmarks.soak`): no checkpoint, one ensemble, many requests.

Without a mode (or with ``all``) both run and are joined in one report:
``OUT/report.json``, ``report.md``, ``report.png``, plus ``perf_analyzer_data.json``
(and ``perf_analyzer_pixels.json``) to reproduce the served numbers with NVIDIA's
perf_analyzer.  Unless ``--url`` names a running server, the embedded tritonserver
is started on free loopback ports for the run and always stopped afterwards.

Wiring (in ``cxr/cli.py``)::

    from cxr.benchmarks.cli import add_bench_parser
    add_bench_parser(sub)          # sub = the top-level subparsers; sets func=cmd_bench

Also runnable on its own: ``python -m cxr.benchmarks.cli --quick --checkpoint ... --out ...``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger("cxr.benchmarks")

MODES = ("all", "latency", "parity")


@dataclass(frozen=True)
class BenchConfig:
    """One ``cxr bench`` run, filled from the command line by :func:`config_from_args`."""

    checkpoint: Path
    repository: Path
    out: Path
    mode: str = "all"
    url: str | None = None  # None: start the embedded server for the run
    data: Path | None = None  # None: synthesise unseen studies
    quick: bool = False
    images: int | None = None  # held-out studies; default 8 quick / 32 full (the export check's count)
    backends: tuple[str, ...] = ()  # empty: all of cxr.benchmarks.backends.BACKENDS
    concurrency: tuple[int, ...] = ()  # empty: 1,2,4 quick / 1,2,4,8 full
    batches: tuple[int, ...] = (1, 4)
    requests: int | None = None  # per point; default from the sweep
    seconds: float | None = None
    served_precision: str = "fp32"  # which ONNX the server at --url runs (the embedded one: fp32)
    progress: bool = True
    strict: bool = False  # exit 1 when a backend fails parity
    server_timeout: float = 180.0
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown bench mode {self.mode!r}; choose one of: {', '.join(MODES)}")
        from cxr.benchmarks.backends import BACKENDS

        unknown = [b for b in self.backends if b not in BACKENDS]
        if unknown:  # before minutes of loading and server start-up
            raise ValueError(f"unknown backend(s) {', '.join(unknown)}; choose from: {', '.join(BACKENDS)}")
        if self.served_precision not in ("fp32", "int8"):
            raise ValueError(f"--served-precision must be fp32 or int8, got {self.served_precision!r}")

    @property
    def n_images(self) -> int:
        return self.images or (8 if self.quick else 32)

    def sweep(self):
        from dataclasses import replace

        from cxr.benchmarks.latency import FULL_SWEEP, QUICK_SWEEP

        sweep = QUICK_SWEEP if self.quick else FULL_SWEEP
        load = sweep.load
        if self.requests is not None:
            load = replace(load, requests=self.requests)
        if self.seconds is not None:
            load = replace(load, seconds=self.seconds)
        return replace(sweep, concurrency=self.concurrency or sweep.concurrency, batches=self.batches, load=load)


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,2,4, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    from cxr.benchmarks.backends import BACKENDS

    p.add_argument("mode", nargs="?", default="all", choices=(*MODES, "soak"),
                   help="latency, parity, or all (default: both, joined in one report); soak: the bounded soak "
                   "of the served ensemble (options below)")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="the trained checkpoint (PyTorch reference); required except for soak")
    p.add_argument("--repository", "--model-repository", type=Path, default=Path("model_repository"),
                   help="model repository with the exported artifacts (default model_repository)")
    p.add_argument("--out", type=Path, required=True,
                   help="folder for report.json/.md/.png and perf_analyzer data (soak: soak.json, soak.png)")
    p.add_argument("--url", default=None, help="gRPC HOST:PORT of a running server (default: start the embedded one)")
    p.add_argument("--data", type=Path, default=None, help="NIH-layout dataset: its test split is used (default: synthesise); soak: a folder of PNG/DICOM studies")
    p.add_argument("--quick", action="store_true", help="short run: 8 images, concurrency 1,2,4, 16 requests per point")
    p.add_argument("--images", type=int, default=None, help="held-out studies to use (default 8 quick, 32 full; soak: studies cycled, default 32)")
    p.add_argument("--backends", default=None, help=f"comma-separated subset of {','.join(BACKENDS)}")
    p.add_argument("--concurrency", type=_ints, default=None, help="concurrency sweep, e.g. 1,2,4,8 (soak: one value, default 8)")
    p.add_argument("--batches", type=_ints, default=(1, 4), help="in-process batch sizes (default 1,4)")
    p.add_argument("--requests", type=int, default=None, help="completed requests per point (soak: recorded requests, default 2000)")
    p.add_argument("--seconds", type=float, default=None, help="time limit per point in seconds (soak: optional cap on the recorded phase)")
    p.add_argument("--served-precision", choices=("fp32", "int8"), default="fp32",
                   help="ONNX precision the server at --url runs, for its parity tolerance (default fp32)")
    p.add_argument("--strict", action="store_true", help="exit 1 when a backend fails parity (the report is written anyway)")
    p.add_argument("--json", action="store_true", help="print report.json on stdout instead of the table")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars (also off when stderr is not a terminal)")
    add_soak_arguments(p.add_argument_group(
        "soak", "cxr bench soak: --requests N recorded requests (default 2000) at --concurrency C (one value, default 8) "
        "against --url, or against the embedded server started on --model-repository; --data: a folder of "
        "PNG/DICOM studies to cycle (default: synthesise); --images: how many of them (default 32); --seconds: "
        "optional cap on the recorded phase; --quick: 200 requests at concurrency 4. Server RSS is summed over the "
        "tritonserver process tree: the embedded one, --server-pid, or the local process listening on --url's port. "
        "Exit status 1 when any request failed or a gate is exceeded."))


def add_soak_arguments(g) -> None:
    """The soak-only options (``--requests``/``--concurrency``/``--url``/``--data``/``--out`` are shared)."""
    g.add_argument("--warmup", type=int, default=None, help="soak: unrecorded requests before the RSS baseline (default 16)")
    g.add_argument("--windows", type=int, default=10, help="soak: windows by completion order (default 10)")
    g.add_argument("--server-pid", type=int, default=None,
                   help="soak: pid of the tritonserver behind --url whose process tree's RSS to sample")
    g.add_argument("--rss-interval", type=float, default=0.5, help="soak: seconds between RSS samples (default 0.5)")
    g.add_argument("--timeout", type=float, default=60.0, help="soak: seconds per request, no retries (default 60)")
    g.add_argument("--max-p99-ratio", type=float, default=None,
                   help="soak gate: exit 1 when p99 of the last third of the windows over the first third "
                   "(after a warm-up window) exceeds this (default off; 2 is a lenient gate on a shared CPU)")
    g.add_argument("--max-rss-drift-mb", type=float, default=None,
                   help="soak gate: exit 1 when server RSS grew by more than this many MB (default off)")


def add_bench_parser(sub) -> argparse.ArgumentParser:
    """Add ``bench`` to the top-level subparsers ``sub``; returns the new parser."""
    p = sub.add_parser(
        "bench",
        help="latency/throughput and accuracy parity of every backend, one report",
        description="Benchmark PyTorch eager, ONNX Runtime FP32/INT8, TensorRT FP16 (GPU) and the Triton ensemble "
        "(gRPC bytes and shared-memory pixels): p50/p95/p99 latency and images/s over a concurrency sweep, end to "
        "end and model-only, and parity against PyTorch on the same held-out images (match rate, score deltas, "
        "mAP@0.5, per-class AP, FROC). Writes OUT/report.json, report.md, report.png and perf_analyzer input data. "
        "Starts its own embedded server unless --url is given. `cxr bench soak` instead drives the served ensemble "
        "with many requests and reports failures, p50/p99 per window and the server's RSS drift (soak.json, soak.png).",
    )
    add_bench_arguments(p)
    p.set_defaults(func=cmd_bench)
    return p


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    if args.checkpoint is None:
        from cxr.errors import UsageError

        raise UsageError(f"cxr bench {args.mode} needs --checkpoint CKPT (only `cxr bench soak` runs without one)")
    backends = tuple(b.strip() for b in args.backends.split(",") if b.strip()) if args.backends else ()
    return BenchConfig(
        checkpoint=args.checkpoint, repository=args.repository, out=args.out, mode=args.mode, url=args.url,
        data=args.data, quick=args.quick, images=args.images, backends=backends, concurrency=args.concurrency or (),
        batches=args.batches, requests=args.requests, seconds=args.seconds, served_precision=args.served_precision,
        progress=not (args.quick or args.json or args.quiet), strict=args.strict,
    )


@contextlib.contextmanager
def _server(cfg: BenchConfig, needed: bool):
    """Yield the gRPC URL to use: ``cfg.url``, a fresh embedded server's, or None when not needed."""
    if cfg.url is not None or not needed:
        yield cfg.url
        return
    from cxr.triton_server import TritonServer

    # The with stops it on every exit path, exceptions and Ctrl-C included.
    with TritonServer.on_free_ports(cfg.repository, log_file=cfg.out / "tritonserver.log") as server:
        yield server.url


def _triton_version(url: str | None) -> str | None:
    if url is None:
        return None
    try:
        import tritonclient.grpc as grpcclient

        with contextlib.closing(grpcclient.InferenceServerClient(url)) as c:
            return c.get_server_metadata(client_timeout=10).version
    except Exception:  # noqa: BLE001 - informational only
        return None


def run_bench(cfg: BenchConfig) -> dict:
    """Run the benchmark described by ``cfg``; returns the report (also written to ``cfg.out``)."""
    from cxr.benchmarks.backends import BACKENDS, IN_PROCESS, open_backends
    from cxr.benchmarks.env import environment, matmul_peak_gflops, model_flops
    from cxr.benchmarks.inputs import load_images
    from cxr.benchmarks.latency import run_latency
    from cxr.benchmarks.parity import run_parity
    from cxr.benchmarks.perf_data import command_lines, write_perf_data
    from cxr.benchmarks.report import build_report, write_report
    from cxr.training.checkpoint import load_checkpoint

    ckpt = load_checkpoint(cfg.checkpoint)
    names = list(cfg.backends or BACKENDS)
    if cfg.mode != "latency" and "pytorch" not in names:
        names.insert(0, "pytorch")  # parity's reference
    images, source = load_images(ckpt, data=cfg.data, n=cfg.n_images)
    log.info("images: %s", source)
    sweep = cfg.sweep()
    served = any(n not in IN_PROCESS for n in names)
    with _server(cfg, served) as url:
        backends = open_backends(ckpt, checkpoint=cfg.checkpoint, repository=cfg.repository, url=url, probe=images[0],
                                 names=names, served_precision=cfg.served_precision, batches=sweep.batches)
        try:
            points, parity, flops, peak = {}, None, None, None
            if cfg.mode in ("all", "latency"):
                points = run_latency(backends, images, sweep, progress=cfg.progress)
                peak, flops = matmul_peak_gflops(repeats=3 if cfg.quick else 5), model_flops(ckpt)
            if cfg.mode in ("all", "parity"):
                parity = run_parity(backends, images, ckpt.class_names, progress=cfg.progress)
            env = environment(input_size=ckpt.preprocess.size,
                              extra={"triton_version": _triton_version(url), "server": "--url" if cfg.url else ("embedded" if url else None)})
        finally:
            for b in backends:
                b.close()
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items() if k != "extra"}
    config["sweep"] = {"concurrency": list(sweep.concurrency), "batches": list(sweep.batches), **asdict(sweep.load)}
    report = build_report(env=env, backends=backends, points=points, parity=parity, flops=flops, peak=peak,
                          images=source, config=config)
    perf = write_perf_data(cfg.out, [im.data for im in images], [im.pixels for im in images if im.pixels is not None])
    report["perf_analyzer"] = {"files": {k: v.name for k, v in perf.items()},
                               "commands": command_lines(pixels=perf["pixels"].name if "pixels" in perf else None)}
    report["written"] = {k: str(v) for k, v in write_report(report, cfg.out).items()}
    return report


def cmd_bench(args: argparse.Namespace) -> int:
    """CLI entry: run, print the joined table (or the JSON), exit 0 when the report is written."""
    from cxr.benchmarks.report import joined_table

    if args.mode == "soak":
        return cmd_soak(args)
    cfg = config_from_args(args)
    report = run_bench(cfg)
    if args.json:
        json.dump(report, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        print(joined_table(report))
        print("\ntargets:")
        for t in report["targets"]:
            met = {True: "met", False: "NOT met", None: "not measured"}[t["met"]]
            value = "n/a" if t["value"] is None else (f"{t['value']:.3f}" if isinstance(t["value"], float) else t["value"])
            print(f"  {t['target']}: {value} (need {t['need']}) - {met}")
        print(f"\nwrote {', '.join(report['written'].values())}")
        print("perf_analyzer: " + "\n               ".join(report["perf_analyzer"]["commands"]) + f"   (files in {cfg.out})")
    failed = [r["name"] for r in report["backends"] if r["status"] == "failed-parity"]
    if failed and cfg.strict:
        print(f"cxr bench: failed parity: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def soak_config(args: argparse.Namespace):
    """The :class:`~cxr.benchmarks.soak.SoakConfig` of ``cxr bench soak``."""
    from cxr.benchmarks.soak import SoakConfig

    if args.concurrency is not None and len(args.concurrency) != 1:
        raise ValueError(f"soak runs at one --concurrency, got {','.join(map(str, args.concurrency))}")
    quick = {"requests": 200, "concurrency": 4, "warmup": 8} if args.quick else {}
    given = {"requests": args.requests, "concurrency": args.concurrency[0] if args.concurrency else None,
             "warmup": args.warmup, "images": args.images, "seconds": args.seconds}
    return SoakConfig(out=args.out, url=args.url, repository=None if args.url else args.repository, data=args.data,
                      windows=args.windows, server_pid=args.server_pid, rss_interval=args.rss_interval,
                      timeout=args.timeout, max_p99_ratio=args.max_p99_ratio, max_rss_drift_mb=args.max_rss_drift_mb,
                      progress=not (args.json or args.quiet),
                      **{**quick, **{k: v for k, v in given.items() if v is not None}})


def cmd_soak(args: argparse.Namespace) -> int:
    """``cxr bench soak``: run, print the window table (or the JSON); exit 1 on any failed request or gate."""
    from cxr.benchmarks.soak import gate_failures, run_soak, soak_table, write_soak

    cfg = soak_config(args)
    report = run_soak(cfg)
    reasons = gate_failures(report, cfg)
    report["passed"], report["failures"] = not reasons, reasons
    report["written"] = {k: str(v) for k, v in write_soak(report, cfg.out).items()}
    if args.json:
        json.dump({k: v for k, v in report.items() if k not in ("samples", "rss_samples")}, sys.stdout, indent=2,
                  default=str)
        sys.stdout.write("\n")
    else:
        print(soak_table(report))
        print(f"\nwrote {', '.join(report['written'].values())}")
    for reason in reasons:
        print(f"cxr bench soak: {reason}", file=sys.stderr)
    return 1 if reasons else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cxr.benchmarks.cli", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log each point")
    add_bench_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return cmd_bench(args)


if __name__ == "__main__":
    raise SystemExit(main())
