"""The export wing's command: ``cxr export {onnx,onnx-int8,trt,paths,checkpoint}``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cxr.console import print_json
from cxr.contract import Artifact


def cmd_paths(args: argparse.Namespace) -> int:
    from cxr.export.paths import format_paths, run_paths

    if args.data is None:
        print("cxr export: error: paths needs --data DIR: parity runs on the held-out (test) studies of that dataset",
              file=sys.stderr)
        return 2
    record, choice = run_paths(args.checkpoint, repository=args.repository, data=args.data,
                               check_images=args.check_images, progress=not args.json)
    if args.json:
        print_json({**record, "chosen": choice.path.name, "reason": choice.reason})
    else:
        print(format_paths(record, choice))
    return 0


def cmd_checkpoint(args: argparse.Namespace) -> int:
    """``cxr export checkpoint``: a copy of the checkpoint with deployment settings changed (--proposals)."""
    from cxr.training.checkpoint import load_checkpoint, save_checkpoint

    if args.out is None or args.proposals is None:
        print("cxr export: error: checkpoint needs --proposals N and --out FILE (the derived checkpoint; "
              "the source is never changed)", file=sys.stderr)
        return 2
    if args.out.resolve() == args.checkpoint.resolve():
        print(f"cxr export: error: --out {args.out} is the source checkpoint: write the derived one beside it", file=sys.stderr)
        return 2
    ckpt = load_checkpoint(args.checkpoint)
    derived = ckpt.with_test_proposals(args.proposals, source=args.checkpoint)
    save_checkpoint(args.out, derived.build_model(), derived)
    old = ckpt.model_config.rpn_post_nms_top_n_test
    if args.json:
        print_json({"kind": "checkpoint", "path": str(args.out), "model_version": derived.model_version,
                    "rpn_post_nms_top_n_test": [old, args.proposals]})
    else:
        print(f"wrote {args.out}: {old} -> {args.proposals} test-time proposals per image, model version "
              f"{derived.model_version}; export it as any checkpoint (cxr export onnx --checkpoint {args.out} ...)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from cxr.export.commands import ParityError, run_export

    if args.kind == "paths":
        return cmd_paths(args)
    if args.kind == "checkpoint":
        return cmd_checkpoint(args)
    if args.proposals is not None:
        print("cxr export: error: --proposals belongs to `cxr export checkpoint` (it writes a checkpoint that keeps N "
              "proposals; export that one)", file=sys.stderr)
        return 2

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
            print_json({"kind": args.kind, "parity": exc.report.to_dict()})
        print(f"cxr export: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print_json(result.to_dict())
    else:
        if result.parity is not None:
            print(result.parity.table())
        print(f"wrote {result.path}")
    return 0



def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``export`` on the top-level parser's subcommands."""
    p = sub.add_parser(
        "export",
        help="export a checkpoint to ONNX, ONNX INT8 or TensorRT FP16",
        description="Export a checkpoint into the Triton model repository (or --out FILE): onnx (FP32), onnx-int8 "
        "(static QDQ, calibrated on training images; for CPUs) or trt (TensorRT FP16 engine; needs an NVIDIA GPU "
        "and TensorRT). --check compares the artifact with PyTorch on held-out studies and fails with a table of "
        "the worst images when outside tolerance. paths checks and times every way the CPU server's detector can "
        "run the placed files (ONNX Runtime or OpenVINO; FP32, BF16, INT8) against PyTorch and records the verdicts "
        "in detector/1/paths.json: `cxr serve` then serves the fastest that passed. checkpoint writes a copy of "
        "--checkpoint to --out with deployment settings changed: --proposals N keeps N RPN proposals per image at "
        "test time (the ROI stage's cost scales with it; benchmarks/README.md measures what it costs in accuracy).",
    )
    p.add_argument("kind", choices=(*Artifact.values(), "paths", "checkpoint"),
                   help="artifact to build; paths: check and time the runtime x precision paths of the placed files; "
                   "checkpoint: a derived checkpoint (--proposals, --out)")
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
    p.add_argument("--proposals", type=int, default=None, metavar="N",
                   help="checkpoint: RPN proposals kept per image at test time (the model's rpn_post_nms_top_n_test; "
                   "torchvision's R50 default 1000, the Faster R-CNN paper's 300)")
    p.add_argument("--min-batch", type=int, default=1, help="TensorRT profile: smallest batch")
    p.add_argument("--opt-batch", type=int, default=4, help="TensorRT profile: batch to optimise for")
    p.add_argument("--max-batch", type=int, default=8, help="TensorRT profile: largest batch")
    p.add_argument("--json", action="store_true", help="print the result (with parity figures) as JSON")
    p.set_defaults(func=cmd_export)
