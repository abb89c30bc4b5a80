"""``cxr bench``: the benchmark report, and the bounded soak.

::

    cxr bench [all|latency|parity] (--checkpoint CKPT | --arch ARCH[@SIZE] [--size S,...]) --out DIR [--repository DIR]
              [--url HOST:PORT] [--quick] ...
    cxr bench soak --out DIR [--model-repository DIR | --url HOST:PORT] [--requests N] [--concurrency C] ...
    cxr bench train-r50 --data DIR --out RUN [--minutes M]

``all`` (also what ``cxr bench`` runs without a subcommand) runs the latency sweep and
parity and joins them in one report: ``OUT/report.json``, ``report.md``, ``report.png``,
plus ``perf_analyzer_data.json`` (and ``perf_analyzer_pixels.json``) to reproduce the
served numbers with NVIDIA's perf_analyzer.  One report covers every model of the run:
the trained ``--checkpoint`` (served from ``--repository``) and each untrained
``--arch`` at each ``--size`` (:mod:`cxr.benchmarks.models`; exported by the bench into
``OUT/models/``; speed rows only).  ``soak`` (:mod:`cxr.benchmarks.soak`) needs no
checkpoint: one ensemble, many requests; it has options of its own.  ``train-r50``
(:mod:`cxr.benchmarks.train_r50`) trains the CPU-sized ResNet-50 FPN that INT8 parity is
judged on.  The run itself is :mod:`cxr.benchmarks.runner`.  Unless ``--url`` names a running server (it serves the ``--checkpoint``
model), the embedded tritonserver is started on free loopback ports per model and always
stopped afterwards.

Wiring (in ``cxr/cli.py``)::

    from cxr.benchmarks.cli import add_bench_parser
    add_bench_parser(sub)          # sub = the top-level subparsers; sets func=cmd_bench / cmd_soak

Also runnable on its own: ``python -m cxr.benchmarks.cli [SUBCOMMAND] --checkpoint ... --out ...``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

from cxr.benchmarks.vocab import BenchStatus
from cxr.contract import CPU_PRECISIONS, Precision
from cxr.errors import InvalidOptionError, UsageError

log = logging.getLogger("cxr.benchmarks")

MODES = ("all", "latency", "parity")


@dataclass(frozen=True)
class BenchConfig:
    """One ``cxr bench`` run, filled from the command line by :func:`config_from_args`."""

    out: Path
    checkpoint: Path | None = None  # the trained model; None: only --arch models
    archs: tuple[str, ...] = ()  # untrained models, ARCH[@SIZE] or PRESET[@SIZE] (cxr.benchmarks.models)
    sizes: tuple[int, ...] = ()  # for an --arch without @SIZE; empty: 512 quick / 512,800 full (cpu-demo: 256)
    repository: Path = Path("model_repository")
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
    served_precision: Precision | str | None = None  # pins the embedded server's ort-fp32/ort-int8; for --url: what it runs
    progress: bool = True
    strict: bool = False  # exit 1 when a backend fails parity
    server_timeout: float = 180.0
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InvalidOptionError(f"unknown bench mode {self.mode!r}; choose one of: {', '.join(MODES)}")
        from cxr.benchmarks.backends import BACKENDS

        unknown = [b for b in self.backends if b not in BACKENDS]
        if unknown:  # before minutes of loading and server start-up
            raise InvalidOptionError(f"unknown backend(s) {', '.join(unknown)}; choose from: {', '.join(BACKENDS)}")
        if self.served_precision is not None:
            if str(self.served_precision) not in CPU_PRECISIONS:
                raise InvalidOptionError(f"--served-precision must be fp32 or int8, got {self.served_precision!r}")
            object.__setattr__(self, "served_precision", Precision(self.served_precision))
        if self.url is not None and self.checkpoint is None:
            raise InvalidOptionError("--url serves the --checkpoint model: pass the checkpoint of the model that server runs "
                                     "(the --arch models get embedded servers of their own)")

    @property
    def n_images(self) -> int:
        return self.images or (8 if self.quick else 32)

    def untrained_specs(self) -> list[tuple[str, int]]:
        """(arch, size) of every untrained model, in command-line order (R50-FPN @800 only in a full run)."""
        from cxr.benchmarks.models import parse_spec, preset_for

        out: list[tuple[str, int]] = []
        for spec in self.archs:
            name = spec.partition("@")[0]
            sizes = self.sizes
            if not sizes and preset_for(name) != "cpu-demo" and name != "cpu-demo":
                sizes = (512,) if self.quick else (512, 800)
            out += [s for s in parse_spec(spec, sizes) if s not in out]
        return out

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
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,2,4, got {text!r}") from exc
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``cxr bench [all|latency|parity]`` (defaults: :class:`BenchConfig`'s)."""
    from cxr.benchmarks.backends import BACKENDS, OPT_IN

    p.add_argument("--checkpoint", type=Path, metavar="CKPT",
                   help="the trained checkpoint (PyTorch reference for parity; its artifacts in --repository)")
    p.add_argument("--arch", dest="archs", type=_names, metavar="LIST",
                   help="untrained models for speed rows, comma-separated ARCH[@SIZE] or PRESET[@SIZE], e.g. "
                   "fasterrcnn_resnet50_fpn or cpu-demo,r50-fpn@512 (deterministic weights; exported into OUT/models/; "
                   "accuracy columns say 'untrained')")
    p.add_argument("--size", dest="sizes", type=_ints, metavar="LIST",
                   help="input sizes for an --arch without @SIZE (default 512 with --quick, 512,800 without; cpu-demo 256)")
    p.add_argument("--repository", "--model-repository", type=Path, metavar="DIR",
                   help="model repository with the exported artifacts (default model_repository)")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="folder for report.json/.md/.png and perf_analyzer data (required)")
    p.add_argument("--url", metavar="HOST:PORT", help="gRPC address of a running server (default: start the embedded one)")
    p.add_argument("--data", type=Path, metavar="DIR",
                   help="NIH-layout dataset: its test split is used (default: synthesise)")
    p.add_argument("--quick", action="store_true", help="short run: 8 images, concurrency 1,2,4, 16 requests per point")
    p.add_argument("--images", type=int, metavar="N", help="held-out studies to use (default 8 quick, 32 full)")
    p.add_argument("--backends", type=_names, metavar="LIST",
                   help=f"comma-separated subset of {','.join(BACKENDS)} (default: all but {','.join(OPT_IN)})")
    p.add_argument("--concurrency", type=_ints, metavar="LIST",
                   help="concurrency sweep, e.g. 1,2,4,8 (default 1,2,4 quick, 1,2,4,8 full)")
    p.add_argument("--batches", type=_ints, metavar="LIST", help="in-process batch sizes (default 1,4)")
    p.add_argument("--requests", type=int, metavar="N", help="requests per point (default 16 quick, 64 full)")
    p.add_argument("--seconds", type=float, metavar="S", help="time limit per point (default 4 quick, 20 full)")
    p.add_argument("--served-precision", choices=[str(x) for x in CPU_PRECISIONS],
                   help="pin the embedded server's detector to ONNX Runtime at this precision (default: it serves what "
                   "`cxr serve` would, the fastest path that passed `cxr export paths`); for --url it says what that "
                   "server runs (default fp32)")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 when a backend fails parity (the report is written anyway)")
    p.add_argument("--json", action="store_true", help="print report.json on stdout instead of the table")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars (also off when stderr is not a terminal)")


def add_soak_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``cxr bench soak`` (defaults: :class:`~cxr.benchmarks.soak.SoakConfig`'s)."""
    p.add_argument("--model-repository", "--repository", dest="repository", type=Path, metavar="DIR",
                   help="start the embedded server on this repository for the run (default model_repository; "
                   "ignored with --url)")
    p.add_argument("--url", metavar="HOST:PORT", help="gRPC address of a running server to soak instead")
    p.add_argument("--out", type=Path, metavar="DIR", required=True, help="folder for soak.json and soak.png")
    p.add_argument("--requests", type=int, metavar="N", help="recorded requests (default 2000; 200 with --quick)")
    p.add_argument("--concurrency", type=_ints, metavar="C",
                   help="closed-loop workers, one value (default 8; 4 with --quick)")
    p.add_argument("--warmup", type=int, metavar="N",
                   help="unrecorded requests before the RSS baseline (default 16; 8 with --quick)")
    p.add_argument("--seconds", type=float, metavar="S", help="optional cap on the recorded phase")
    p.add_argument("--quick", action="store_true", help="200 requests at concurrency 4 (explicit options win)")
    p.add_argument("--data", type=Path, metavar="DIR",
                   help="folder of PNG/DICOM studies to cycle, e.g. an NIH-layout dataset (default: synthesise)")
    p.add_argument("--images", type=int, metavar="N", help="distinct studies in the cycle (default 32)")
    p.add_argument("--windows", type=int, metavar="N", help="windows by completion order (default 10)")
    p.add_argument("--server-pid", type=int, metavar="PID",
                   help="pid of the tritonserver behind --url whose process tree's RSS to sample "
                   "(default: the local process listening on --url's port)")
    p.add_argument("--rss-interval", type=float, metavar="S", help="seconds between RSS samples (default 0.5)")
    p.add_argument("--timeout", type=float, metavar="S", help="seconds per request, no retries (default 60)")
    p.add_argument("--max-p99-ratio", type=float, metavar="R",
                   help="gate: exit 1 when p99 of the last third of the windows over the first third "
                   "(after a warm-up window) exceeds R (default off; 2 is a lenient gate on a shared CPU)")
    p.add_argument("--max-rss-drift-mb", type=float, metavar="MB",
                   help="gate: exit 1 when server RSS grew by more than MB (default off)")
    p.add_argument("--json", action="store_true", help="print soak.json (without the per-request samples) on stdout")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar (also off when stderr is not a terminal)")


BENCH_DESCRIPTION = (
    "Benchmark PyTorch eager (FP32, bf16), ONNX Runtime FP32/INT8, OpenVINO (FP32, bf16, INT8; when installed), "
    "TensorRT FP16 (GPU) and the Triton ensemble (gRPC bytes and shared-memory pixels): p50/p95/p99 latency and "
    "images/s over a concurrency sweep, end to end and model-only, GFLOP/s against this machine's measured FP32/BF16/"
    "INT8 GEMM peaks, Triton's per-step split, and parity against PyTorch on the same held-out images (match rate, "
    "score deltas, mAP@0.5, per-class AP, FROC). One report covers the trained --checkpoint and every untrained "
    "--arch model (speed rows only). Writes OUT/report.json, report.md, report.png and perf_analyzer input data. "
    "Starts its own embedded server per model unless --url is given. Without a subcommand it runs `all`; "
    "`cxr bench soak --help` and `cxr bench train-r50 --help` show theirs.")
SUBCOMMANDS = {
    "all": "latency sweep and parity, joined in one report (what `cxr bench` runs without a subcommand)",
    "latency": "the latency/throughput sweep only",
    "parity": "accuracy parity against PyTorch only",
}
SOAK_DESCRIPTION = (
    "A bounded soak of the served cxr_detector ensemble: --requests recorded requests at --concurrency (one "
    "value), against --url or the embedded server started on --model-repository, through one client with retries "
    "off. Reports failures by gRPC status, p50/p99 per window, p99 stability (last third of the windows over the "
    "first) and the server's RSS summed over its process tree (the embedded one, --server-pid, or the local "
    "process listening on --url's port). Writes OUT/soak.json and soak.png. Exit status 1 when any request failed "
    "or a gate is exceeded.")


def build_bench_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Give ``p`` (made with ``argument_default=argparse.SUPPRESS``) the bench options and subcommands.

    ``p`` itself takes the options of ``all``, so ``cxr bench --quick ...`` runs ``all``
    (argparse has no default subcommand; an optional subparser plus the default's
    options on the parent is its plain form).  Every parser leaves options that were
    not given out of the namespace (SUPPRESS): a subcommand's defaults then cannot
    reset what was given before its name (``cxr bench --quick latency``), and each
    default lives once, in :class:`BenchConfig` or ``SoakConfig``.
    """
    add_bench_arguments(p)
    sub = p.add_subparsers(dest="mode", metavar="{all,latency,parity,soak,train-r50,train-speed,masks,layers,explain}", title="subcommands")
    p.set_defaults(func=cmd_bench, mode="all")  # after add_subparsers: it sets that action's default
    for mode, summary in SUBCOMMANDS.items():
        q = sub.add_parser(mode, help=summary, description=f"{summary}. {BENCH_DESCRIPTION}",
                           argument_default=argparse.SUPPRESS)
        add_bench_arguments(q)
    q = sub.add_parser("soak", help="bounded soak of the served ensemble: failures, p99 stability, server memory",
                       description=SOAK_DESCRIPTION, argument_default=argparse.SUPPRESS)
    add_soak_arguments(q)
    q.set_defaults(func=cmd_soak)
    from cxr.benchmarks import train_r50

    q = sub.add_parser("train-r50", help="train the CPU-sized ResNet-50 FPN that INT8 parity is judged on",
                       description=train_r50.DESCRIPTION, argument_default=argparse.SUPPRESS)
    train_r50.add_arguments(q)
    q.set_defaults(func=train_r50.cmd_train_r50)
    from cxr.benchmarks import train_speed

    q = sub.add_parser("train-speed", help="training images/s, FP32 vs BF16, measured in one run on this CPU",
                       description=train_speed.DESCRIPTION)
    train_speed.add_arguments(q)
    q.set_defaults(func=train_speed.cmd_train_speed)
    from cxr.benchmarks import masks

    q = sub.add_parser("masks", help="a Mask R-CNN: eager/ORT FP32/INT8 latency, mask parity, paste and encode cost",
                       description=masks.DESCRIPTION)
    masks.add_arguments(q)
    q.set_defaults(func=masks.cmd_masks)
    from cxr.benchmarks import layers

    q = sub.add_parser("layers", help="per-layer time of each OpenVINO path (PERF_COUNT): what low precision does not shrink",
                       description=layers.DESCRIPTION)
    layers.add_arguments(q)
    q.set_defaults(func=layers.cmd_layers)
    from cxr.benchmarks import explain

    q = sub.add_parser("explain", help="ms per explained study (cxr_explain) and in detections of the same study",
                       description=explain.DESCRIPTION)
    explain.add_arguments(q)
    q.set_defaults(func=explain.cmd_explain)
    return p


def add_bench_parser(sub) -> argparse.ArgumentParser:
    """Add ``bench`` to the top-level subparsers ``sub``; returns the new parser."""
    p = sub.add_parser("bench", help="latency/throughput and accuracy parity of every backend, one report; soak",
                       description=BENCH_DESCRIPTION, argument_default=argparse.SUPPRESS)
    return build_bench_parser(p)


def _given(args: argparse.Namespace, config: type) -> dict:
    """The options given on the command line that are fields of the dataclass ``config``."""
    names = {f.name for f in fields(config)}
    return {k: v for k, v in vars(args).items() if k in names}


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    given = _given(args, BenchConfig)
    if "checkpoint" not in given and not given.get("archs"):
        raise UsageError(f"cxr bench {args.mode} needs --checkpoint CKPT (a trained model) or --arch ARCH (an untrained "
                         "one for speed rows, e.g. --arch fasterrcnn_resnet50_fpn --size 512); only `cxr bench soak` "
                         "runs without either")
    if "out" not in given:
        raise UsageError(f"cxr bench {args.mode} needs --out DIR, the folder for the report")
    quiet = any(getattr(args, k, False) for k in ("quick", "json", "quiet"))
    return BenchConfig(**given, progress=not quiet)


def cmd_bench(args: argparse.Namespace) -> int:
    """CLI entry: run, print the joined table (or the JSON), exit 0 when the report is written."""
    from cxr.benchmarks.report import met_word
    from cxr.benchmarks.report_md import isa_header, joined_table, steps_table

    from cxr.benchmarks.runner import run_bench

    cfg = config_from_args(args)
    report = run_bench(cfg)
    if getattr(args, "json", False):
        json.dump(report, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        print(isa_header(report["env"]))
        for section in report["models"]:
            print(f"\n{section['name']} ({'trained' if section['trained'] else 'untrained'}): {section['source']}")
            print(joined_table(section))
            print(steps_table(section["serving"]))
            print("targets:")
            for t in section["targets"]:
                value = "n/a" if t["value"] is None else (f"{t['value']:.3f}" if isinstance(t["value"], float) else t["value"])
                print(f"  {t['target']}: {value} (need {t['need']}) - {met_word(t)}")
        print(f"\nwrote {', '.join(report['written'].values())}")
        print("perf_analyzer: " + "\n               ".join(report["perf_analyzer"]["commands"]) + f"   (files in {cfg.out})")
    failed = [f"{s['name']}/{r['name']}" for s in report["models"] for r in s["backends"] if r["status"] == BenchStatus.FAILED_PARITY]
    if failed and cfg.strict:
        print(f"cxr bench: failed parity: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


# Options of `cxr bench all|latency|parity` that soak lacks; given before `soak` they would
# otherwise be dropped without a word.
BENCH_ONLY = ("checkpoint", "archs", "sizes", "backends", "batches", "served_precision", "strict")


def soak_config(args: argparse.Namespace):
    """The :class:`~cxr.benchmarks.soak.SoakConfig` of ``cxr bench soak``."""
    from cxr.benchmarks.soak import SoakConfig

    misplaced = [f"--{k.replace('_', '-')}" for k in BENCH_ONLY if hasattr(args, k)]
    if misplaced:
        raise UsageError(f"cxr bench soak does not take {', '.join(misplaced)} (options of cxr bench "
                         "all|latency|parity); see cxr bench soak --help")
    given = _given(args, SoakConfig)
    if "concurrency" in given:
        if len(given["concurrency"]) != 1:
            raise UsageError(f"soak runs at one --concurrency, got {','.join(map(str, given['concurrency']))}; give one "
                             "value, e.g. --concurrency 8 (a concurrency sweep is `cxr bench latency --concurrency 1,2,4`)")
        given["concurrency"] = given["concurrency"][0]
    if "url" in given:
        given.pop("repository", None)
    else:
        given.setdefault("repository", Path("model_repository"))
    quick = {"requests": 200, "concurrency": 4, "warmup": 8} if getattr(args, "quick", False) else {}
    quiet = getattr(args, "json", False) or getattr(args, "quiet", False)
    return SoakConfig(**{**quick, **given}, progress=not quiet)


def cmd_soak(args: argparse.Namespace) -> int:
    """``cxr bench soak``: run, print the window table (or the JSON); exit 1 on any failed request or gate."""
    from cxr.benchmarks.soak import gate_failures, run_soak, soak_table, write_soak

    cfg = soak_config(args)
    report = run_soak(cfg)
    reasons = gate_failures(report, cfg)
    report["passed"], report["failures"] = not reasons, reasons
    report["written"] = {k: str(v) for k, v in write_soak(report, cfg.out).items()}
    if getattr(args, "json", False):
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
    parser = argparse.ArgumentParser(prog="python -m cxr.benchmarks.cli", description=BENCH_DESCRIPTION,
                                     argument_default=argparse.SUPPRESS)
    parser.add_argument("-v", "--verbose", action="store_true", default=False,
                        help="log each point (before a subcommand)")
    build_bench_parser(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
