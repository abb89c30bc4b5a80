"""The ``cxr`` command line: one entry point, a subcommand per stage.

Heavy imports (torch, tritonclient, ...) happen inside the subcommand that needs them,
so ``cxr --help`` and the client commands work on a PACS host without torch.
Every subcommand exits non-zero on failure with a one-line reason on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from pathlib import Path

from cxr import __version__
from cxr.client.tls import add_tls_arguments, tls_options  # argparse only: no client extra needed
from cxr.contract import CPU_PRECISIONS, Artifact, ServeTarget
from cxr.errors import InvalidImageError, UsageError

log = logging.getLogger("cxr")


def _print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


# ------------------------------------------------------------------------------ synth


def cmd_synth(args: argparse.Namespace) -> int:
    from cxr.training.annotations import NIHDataset, format_summary, summarize
    from cxr.training.synth import SynthConfig, generate

    cfg = SynthConfig(
        images=args.images,
        seed=args.seed,
        bit_depth=args.bit_depth,
        dicom=args.dicom,
        preview=args.preview,
    )
    out = generate(args.out, cfg, progress=not args.json)
    ds = NIHDataset.from_dir(out, seed=args.seed)
    summary = summarize(ds.studies, ds.splits)
    if args.json:
        _print_json({"out": str(out), **summary})
    else:
        print(format_summary(summary))
        print(f"\nwrote {out}")
        if args.preview:
            print(f"preview: {Path(out) / 'preview.png'}")
        if args.dicom:
            print(f"DICOM:   {Path(out) / 'dicom'}")
    return 0


# ------------------------------------------------------------------------------- data


def cmd_data_info(args: argparse.Namespace) -> int:
    from cxr.training.annotations import NIHDataset, format_summary, summarize

    ds = NIHDataset.from_dir(args.dir, seed=args.seed)
    summary = summarize(ds.studies, ds.splits)
    if args.json:
        _print_json(summary)
    else:
        print(format_summary(summary))
    return 0


# ------------------------------------------------------------------------ train/eval


def _int_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def cmd_train(args: argparse.Namespace) -> int:
    from cxr.training.train import make_config, train

    cfg = make_config(
        args.preset, data=args.data, out=args.out, weights=args.weights, epochs=args.epochs,
        trainable_backbone_layers=args.trainable_backbone_layers, backbone_lr_mult=args.backbone_lr_mult,
        anchor_sizes=args.anchor_sizes,
        batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer, size=args.size, arch=args.arch,
        seed=args.seed, resume=args.resume, max_minutes=args.max_minutes, device=args.device,
        labelset=args.labels,
    )
    best = train(cfg)
    print(f"best checkpoint: {best}")
    print(f"last checkpoint: {cfg.out / 'last.pt'}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from cxr.training.evaluate import evaluate_checkpoint
    from cxr.training.metrics import format_metrics_table

    metrics = evaluate_checkpoint(
        args.checkpoint, args.data, args.out, split=args.split, batch_size=args.batch_size,
        bootstrap=args.bootstrap, device=args.device, progress=not args.json,
    )
    if args.json:
        _print_json(metrics)
    else:
        print(format_metrics_table(metrics))
        print(f"\nwrote {args.out}/metrics.json, metrics.md, predictions.csv, pr_froc.png, examples.png, loss_curve.png")
    return 0


# ----------------------------------------------------------------------------- export


def cmd_export(args: argparse.Namespace) -> int:
    from cxr.export.commands import ParityError, run_export

    profile = None
    if args.kind == "trt":
        from cxr.export.tensorrt import BatchProfile

        profile = BatchProfile(args.min_batch, args.opt_batch, args.max_batch)
    try:
        result = run_export(
            args.kind, args.checkpoint, repository=args.repository, out=args.out, data=args.data, check=args.check,
            check_images=args.check_images, calibration_images=args.calibration_images, force=args.force,
            batch_profile=profile, int8_budget=None if args.int8_all else args.int8_budget,
            int8_search_images=args.int8_search_images, progress=not args.json,
        )
    except ParityError as exc:
        if args.json:
            _print_json({"kind": args.kind, "parity": exc.report.to_dict()})
        print(f"cxr export: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        _print_json(result.to_dict())
    else:
        if result.parity is not None:
            print(result.parity.table())
        print(f"wrote {result.path}")
    return 0


# ------------------------------------------------------------------------------ serve


def cmd_serve(args: argparse.Namespace) -> int:
    import signal
    import threading

    from cxr.triton_server import TritonServer

    log_file = args.log_file or Path(args.model_repository) / "tritonserver.log"
    server = TritonServer(
        model_repository=args.model_repository, grpc_port=args.grpc_port, http_port=args.http_port,
        metrics_port=args.metrics_port, host=args.host, target=args.target, precision=args.precision, log_file=log_file,
        tls_cert=args.tls_cert, tls_key=args.tls_key, tls_ca=args.tls_ca,
    )
    server.tls_flags()  # bad TLS files fail here, before anything starts
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server.start(timeout=args.timeout)  # logs the exposure warnings (non-loopback bind)
    security = server.tls.description
    print(f"Triton is serving cxr_detector ({args.target}, {args.precision}) from {args.model_repository}")
    print(f"  gRPC     {args.host}:{args.grpc_port} ({security})")
    print(f"  HTTP     http://{server.http_host}:{args.http_port}/v2/models/cxr_detector")
    print(f"  metrics  http://{server.http_host}:{args.metrics_port}/metrics")
    print(f"  log      {log_file}")
    print("Ctrl-C to stop.", flush=True)
    try:
        while not stop.wait(1.0):
            if server.process.poll() is not None:
                print(f"cxr serve: error: tritonserver exited with status {server.process.returncode}; see {log_file}", file=sys.stderr)
                return 1
    finally:
        server.stop()
    print("stopped.")
    return 0


# ---------------------------------------------------------------------------- predict


def cmd_predict(args: argparse.Namespace) -> int:
    from cxr.client import DetectorClient
    from cxr.client.predict import format_table, outcomes_json, run_predict

    import contextlib

    tls = tls_options(args)
    if args.serve is not None and tls:
        raise UsageError("--serve starts a plaintext server on loopback for this run: drop --ssl/--tls-* (or use --url)")
    server = contextlib.nullcontext()
    url = args.url
    if args.serve is not None:  # one-shot: an embedded server on free loopback ports for this run
        from cxr.triton_server import TritonServer

        server = TritonServer.on_free_ports(args.serve, log_file=Path(args.serve) / "tritonserver.log")
        url = server.url
    stow = None
    if args.stow is not None:
        from cxr.client.destinations import StowDestination, read_auth

        stow = StowDestination(args.stow, headers=read_auth(args.dicomweb_auth), timeout_s=args.timeout)
    with server, DetectorClient(url=url, timeout_s=args.timeout, score_threshold=args.score_threshold, **tls) as client:
        outcomes = run_predict(args.paths, client, png=args.png, sr=args.sr, gsps=args.gsps,
                               min_score=args.min_score, progress=not args.json, stow=stow)
    if args.json:
        print(outcomes_json(outcomes))
    else:
        print(format_table(outcomes, min_score=args.min_score))
        written = [p for o in outcomes for p in o.written]
        for label, folder in (("annotated PNGs", args.png), ("DICOM SR", args.sr), ("DICOM GSPS", args.gsps)):
            if folder is not None:
                n = sum(1 for p in written if p.parent == folder)
                print(f"{label:<15} {n} written to {folder}")
        if stow is not None:
            print(f"{'STOW-RS':<15} {sum(len(o.stored) for o in outcomes)} results stored at {stow}")
    not_stored = [o for o in outcomes if o.stow_error]
    for o in not_stored:
        print(f"cxr predict: {o.path.name}: results not stored: {o.stow_error}", file=sys.stderr)
    failed = sum(o.error is not None for o in outcomes)
    if failed:
        print(f"cxr predict: {failed} of {len(outcomes)} studies failed", file=sys.stderr)
        # The SDK names the likely TLS/mTLS fix when it gives up on a refused handshake.
        hint = next((o.error.hint for o in outcomes if getattr(o.error, "hint", "")), None)
        if hint:
            print(f"cxr predict: hint: {hint}", file=sys.stderr)
    return 1 if failed or not_stored else 0


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxr",
        description="Chest X-ray abnormality detection: data, training, export, Triton serving, PACS client, benchmarks.",
    )
    parser.add_argument("--version", action="version", version=f"cxr-triton {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "synth",
        help="write a synthetic dataset in NIH ChestX-ray14 layout",
        description="Write synthetic chest radiographs with findings in the exact NIH ChestX-ray14 layout "
        "(images/*.png, Data_Entry_2017.csv, BBox_List_2017.csv, train_val_list.txt, test_list.txt), "
        "so every later stage runs without downloads.",
    )
    p.add_argument("out", type=Path, help="output folder (created; must be empty or a previous synth output)")
    p.add_argument("--images", type=int, default=200, help="number of studies (default 200)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed writes identical files (default 0)")
    p.add_argument("--bit-depth", type=int, choices=(8, 16), default=8, help="PNG bit depth (default 8)")
    p.add_argument("--dicom", action="store_true", help="also write every study as DICOM (CR/DX, MONOCHROME1/2) under OUT/dicom/")
    p.add_argument("--preview", action="store_true", help="also write OUT/preview.png, a contact sheet with the boxes drawn")
    p.add_argument("--json", action="store_true", help="print the dataset summary as JSON on stdout")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("data", help="inspect datasets", description="Inspect datasets in NIH ChestX-ray14 layout.")
    data_sub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    q = data_sub.add_parser(
        "info",
        help="summarise a dataset folder",
        description="Summarise a folder in NIH ChestX-ray14 layout: images, patients, boxes per class, split sizes.",
    )
    q.add_argument("dir", type=Path, help="dataset folder (holds Data_Entry_2017*.csv and BBox_List_2017.csv)")
    q.add_argument("--seed", type=int, default=0, help="seed of the patient-level split when no official lists exist")
    q.add_argument("--json", action="store_true", help="print JSON on stdout instead of a table")
    q.set_defaults(func=cmd_data_info)

    p = sub.add_parser(
        "train",
        help="train a Faster R-CNN on an NIH-layout dataset",
        description="Train a Faster R-CNN detector. Presets: cpu-demo (MobileNetV2-FPN from torchvision's ImageNet "
        "weights, 256 px, 10 minutes on 2 CPU cores, for synthetic data) and r50-fpn (ResNet-50-FPN, 800 px, the GPU "
        "configuration). Options given explicitly override the preset. Multi-GPU: torchrun --nproc-per-node N -m cxr.cli train ...",
    )
    p.add_argument("--data", type=Path, required=True, help="dataset folder in NIH ChestX-ray14 layout")
    p.add_argument("--out", type=Path, default=None, help="run folder for checkpoints (default runs/PRESET)")
    p.add_argument("--preset", default="r50-fpn", choices=("cpu-demo", "r50-fpn"), help="configuration preset (default r50-fpn)")
    p.add_argument("--weights", default=None, metavar="NAME|PATH|none",
                   help="initial weights: imagenet (the cached ImageNet file for --arch; `cxr weights fetch` puts it there), "
                   "a name from `cxr weights list`, a local file (torchvision ImageNet backbone such as resnet50-0676ba61.pth, "
                   "or a torchvision/cxr detector), or none (from scratch). Default: the preset's (cpu-demo: imagenet, r50-fpn: none)")
    p.add_argument("--trainable-backbone-layers", type=int, default=None, metavar="0-5",
                   help="over pretrained weights: train only the last N backbone stages (5 = all); random weights always train all")
    p.add_argument("--backbone-lr-mult", type=float, default=None, metavar="X", help="backbone learning rate = --lr x X")
    p.add_argument("--resume", type=Path, default=None, help="continue from a last.pt checkpoint")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--optimizer", choices=("sgd", "adamw"), default=None)
    p.add_argument("--size", type=int, default=None, help="input side S (multiple of 32)")
    p.add_argument("--arch", default=None, help="architecture (see cxr.training.model.ARCHITECTURES)")
    p.add_argument("--anchor-sizes", default=None, type=_int_tuple, metavar="A,B,C,D,E",
                   help="anchor sizes in input pixels, one per FPN level (finest first) or a multiple of five")
    p.add_argument("--labels", default=None, help="label vocabulary: nih-bbox (default) or vindr")
    p.add_argument("--max-minutes", type=float, default=None, help="stop after the iteration that uses up this many minutes (all ranks alike)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:1 ...")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "evaluate",
        help="clinical detection metrics of a checkpoint",
        description="Evaluate a checkpoint: per-class AP@0.5, mAP@0.5/0.4, COCO AP@[.5:.95], FROC, image-level "
        "precision/recall/F1/accuracy/AUROC with bootstrap 95%% intervals. Writes metrics.json, metrics.md, "
        "predictions.csv and plots into --out.",
    )
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True, help="dataset folder in NIH ChestX-ray14 layout")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples for 95%% intervals (0 = off)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print metrics JSON on stdout")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "export",
        help="export a checkpoint to ONNX, ONNX INT8 or TensorRT FP16",
        description="Export a checkpoint into the Triton model repository (or --out FILE): onnx (FP32), onnx-int8 "
        "(static QDQ, calibrated on training images; for CPUs) or trt (TensorRT FP16 engine; needs an NVIDIA GPU "
        "and TensorRT). --check compares the artifact with PyTorch on held-out studies and fails with a table of "
        "the worst images when outside tolerance.",
    )
    p.add_argument("kind", choices=Artifact.values(), help="artifact to build")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--repository", type=Path, default=Path("model_repository"), help="Triton model repository (default model_repository)")
    p.add_argument("--out", type=Path, default=None, help="write the artifact to this file instead of the repository")
    p.add_argument("--data", type=Path, default=None, help="NIH-layout dataset: test split for --check, train split for INT8 "
                   "calibration, val split for the INT8 layer search")
    p.add_argument("--check", action="store_true", help="run the parity check against PyTorch")
    p.add_argument("--check-images", type=int, default=32, help="held-out images for --check (default 32)")
    p.add_argument("--calibration-images", type=int, default=32, help="training images for INT8 calibration (default 32)")
    p.add_argument("--int8-budget", type=float, default=0.05, metavar="FRACTION",
                   help="INT8 mixed precision: quantize only the layer groups that together change at most this "
                   "fraction of the FP32 model's detections on validation images; the rest stay FP32 (default 0.05)")
    p.add_argument("--int8-search-images", type=int, default=32, help="validation images for the INT8 layer search (default 32)")
    p.add_argument("--int8-all", action="store_true", help="quantize the whole network (every op type in the backbone, FPN, RPN and box head; the "
                   "box predictor, NMS, RoiAlign and top-k stay FP32), no search")
    p.add_argument("--force", action="store_true", help="replace artifacts of a different model in the repository")
    p.add_argument("--min-batch", type=int, default=1, help="TensorRT profile: smallest batch")
    p.add_argument("--opt-batch", type=int, default=4, help="TensorRT profile: batch to optimise for")
    p.add_argument("--max-batch", type=int, default=8, help="TensorRT profile: largest batch")
    p.add_argument("--json", action="store_true", help="print the result (with parity figures) as JSON")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "serve",
        help="serve the model repository with the embedded Triton server",
        description="Start the tritonserver shipped by nvidia-pytriton (CPU; Python backend + ensembles) on the "
        "model repository, wait until cxr_detector is ready, print the endpoints and run until Ctrl-C/SIGTERM. "
        "Binds to loopback unless --host says otherwise. GPU production uses the NGC container (see README). "
        "Security: --tls-cert/--tls-key put gRPC on TLS, adding --tls-ca makes it mutual (clients need a certificate "
        "signed by that CA). Triton's HTTP endpoint has no TLS: with TLS on it (and metrics) stays on 127.0.0.1 even "
        "when --host is public. A non-loopback --host without TLS is allowed but logs a warning.",
    )
    p.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    p.add_argument("--target", choices=ServeTarget.values(), default=ServeTarget.CPU.value,
                   help="detector variant: cpu (Python backend + ONNX Runtime), gpu-onnx, gpu-trt (NGC server only)")
    p.add_argument("--precision", choices=[str(x) for x in CPU_PRECISIONS], default=str(CPU_PRECISIONS[0]),
                   help="ONNX file for the cpu target")
    p.add_argument("--host", default="127.0.0.1",
                   help="address gRPC binds (default 127.0.0.1, loopback only); e.g. 0.0.0.0 to serve the network "
                   "- use TLS then")
    p.add_argument("--tls-cert", type=Path, default=None, metavar="PEM",
                   help="server certificate (PEM, chain allowed) for gRPC TLS; needs --tls-key")
    p.add_argument("--tls-key", type=Path, default=None, metavar="PEM", help="server private key (PEM) for gRPC TLS")
    p.add_argument("--tls-ca", type=Path, default=None, metavar="PEM",
                   help="CA certificate (PEM) that signs client certificates: turns on mutual TLS, clients without "
                   "a certificate from this CA are refused at the handshake")
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument("--log-file", type=Path, default=None, help="server log (default MODEL_REPOSITORY/tritonserver.log)")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for readiness")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "predict",
        help="send studies to a running server and show the findings",
        description="Send PNG/JPEG/DICOM studies (files or folders) to the cxr_detector ensemble over gRPC. Prints a "
        "table (or --json); --png writes annotated images, --sr DICOM Structured Reports (TID 1500) and --gsps "
        "presentation states for DICOM inputs. Needs only the client extra (no torch).",
    )
    p.add_argument("paths", type=Path, nargs="+", help="image files or folders (searched recursively)")
    p.add_argument("--url", default="127.0.0.1:8001", help="server gRPC address host:port (default 127.0.0.1:8001)")
    p.add_argument("--serve", type=Path, default=None, metavar="MODEL_REPOSITORY",
                   help="start the embedded server on this repository for the run (needs the serve extra) instead of --url")
    p.add_argument("--json", action="store_true", help="print results as JSON on stdout")
    p.add_argument("--png", type=Path, default=None, metavar="DIR", help="write annotated PNGs into DIR")
    p.add_argument("--sr", type=Path, default=None, metavar="DIR", help="write DICOM SR (TID 1500) files into DIR")
    p.add_argument("--gsps", type=Path, default=None, metavar="DIR", help="write DICOM GSPS overlays into DIR")
    p.add_argument("--stow", default=None, metavar="URL",
                   help="also store each DICOM study's SR (and GSPS with --gsps) with DICOMweb STOW-RS at this service "
                   "root, e.g. http://pacs:8042/dicom-web")
    p.add_argument("--dicomweb-auth", type=Path, default=None, metavar="FILE",
                   help="file (mode 600) with 'basic USER:PASSWORD' or 'bearer TOKEN' for --stow; else "
                   "$CXR_DICOMWEB_AUTH if set. Never on the command line")
    p.add_argument("--score-threshold", type=float, default=None, help="server-side score threshold for this call")
    p.add_argument("--min-score", type=float, default=0.3, help="only show/draw findings at or above this score (default 0.3)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per study, retries included")
    add_tls_arguments(p)
    p.set_defaults(func=cmd_predict)

    from cxr.weights_cli import add_weights_parser  # torch-free

    add_weights_parser(sub)

    from cxr.benchmarks.cli import add_bench_parser  # light: heavy imports happen in cmd_bench

    add_bench_parser(sub)
    try:
        from cxr.client.pacs_cli import add_pacs_parser  # needs the client extra (pynetdicom, highdicom)
    except ImportError:
        pass
    else:
        add_pacs_parser(sub)

    return parser


def _configure_logging(verbose: int) -> None:
    """0: cxr at INFO, others WARNING; -v: cxr at DEBUG (and bug tracebacks); -vv: everything at DEBUG."""
    level = logging.DEBUG if verbose >= 2 else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Third-party INFO chatter (attribute copies, quantizer internals: onnxruntime's quantizer
    # logs on the root logger) hides our lines; -vv shows it.
    logging.getLogger().setLevel(level)
    logging.getLogger("cxr").setLevel(logging.DEBUG if verbose >= 1 else logging.INFO)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("cxr: interrupted", file=sys.stderr)
        return 130
    except (UsageError, InvalidImageError) as exc:
        # Errors the user can fix carry their own explanation: one line, no traceback.
        log.debug("failed", exc_info=True)
        print(f"cxr {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - anything else is a bug in cxr: say so, traceback with -v
        if args.verbose:
            traceback.print_exc()
        hint = "" if args.verbose else " (run with -v for the traceback)"
        print(f"cxr {args.command}: internal error: {type(exc).__name__}: {exc}{hint}; please report it as a bug",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
