"""The client wing's commands: ``cxr predict`` and (with the client extra's DICOM stack) ``cxr pacs``.

Only argparse at import time: tritonclient, pynetdicom and highdicom are imported by the
command that runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cxr.client.tls import add_tls_arguments, tls_options
from cxr.client.viewer.cli import add_viewer_parser
from cxr.contract import LOCAL_URL, SEGMENT
from cxr.errors import UsageError

PREDICT_TIMEOUT_S = 60.0
# An explained study is masks + 1 detector passes (200 by default): seconds on the cpu-demo
# model, minutes on R50-FPN at 512 on a CPU.
SALIENCY_TIMEOUT_S = 600.0


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
        from cxr.server.launcher import TritonServer

        server = TritonServer.on_free_ports(args.serve, log_file=Path(args.serve) / "tritonserver.log")
        url = server.url
    timeout = args.timeout
    if timeout is None:
        timeout = SALIENCY_TIMEOUT_S if args.saliency is not None else PREDICT_TIMEOUT_S
    stow = None
    if args.stow is not None:
        from cxr.client.destinations import StowDestination, read_auth

        stow = StowDestination(args.stow, headers=read_auth(args.dicomweb_auth), timeout_s=timeout)
    explain = None
    if args.saliency is not None:
        # Maps for what is shown: explaining the findings under --min-score would only make the answer bigger.
        explain = {"masks": args.saliency_masks,
                   "score_threshold": args.min_score if args.score_threshold is None else args.score_threshold}
    if args.seg is not None and args.saliency is not None:
        raise UsageError("--seg and --saliency ask two different models (cxr_segment, cxr_explain): run them one at a time")
    model = {"model_name": SEGMENT} if args.seg is not None else {}
    with server, DetectorClient(url=url, timeout_s=timeout, score_threshold=args.score_threshold, **model, **tls) as client:
        if args.seg is not None:
            require_segment(client, url)
        outcomes = run_predict(args.paths, client, png=args.png, sr=args.sr, gsps=args.gsps,
                               min_score=args.min_score, progress=not args.json, stow=stow, saliency=args.saliency,
                               explain=explain, seg=args.seg)
    if args.json:
        print(outcomes_json(outcomes))
    else:
        print(format_table(outcomes, min_score=args.min_score))
        written = [p for o in outcomes for p in o.written]
        for label, folder in (("annotated PNGs", args.png), ("saliency PNGs", args.saliency), ("DICOM SR", args.sr),
                              ("DICOM GSPS", args.gsps), ("DICOM SEG", args.seg)):
            if folder is not None:
                n = sum(1 for p in written if p.parent == folder and (folder != args.saliency or p.suffix == ".png"))
                print(f"{label:<15} {n} written to {folder}")
        if args.saliency is not None:  # beside the overlays: a Parametric Map and a Secondary Capture per finding
            n = sum(1 for p in written if p.parent == args.saliency and p.suffix == ".dcm")
            if n:
                print(f"{'saliency DICOM':<15} {n} written to {args.saliency} (Parametric Maps and Secondary Captures)")
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


def require_segment(client, url: str) -> None:
    """A UsageError (exit 2, one line) when the server has no ``cxr_segment`` (``--seg`` of predict and pacs); other failures are left
    to each study, which reports its own."""
    from cxr.client.errors import DetectorError

    try:
        client.model_spec()
    except DetectorError as err:
        if err.status == "NOT_FOUND":
            raise UsageError(f"--seg needs a server that serves {SEGMENT} (a Mask R-CNN); the server at {url} has "
                             f"none: export a --task segment checkpoint with cxr export and serve that repository") from None


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``predict``, ``viewer`` (and ``pacs`` when its packages are installed)."""
    p = sub.add_parser(
        "predict",
        help="send studies to a running server and show the findings",
        description="Send PNG/JPEG/DICOM studies (files or folders) to the cxr_detector ensemble over gRPC. Prints a "
        "table (or --json); --png writes annotated images, --saliency a saliency overlay per study (D-RISE, one "
        "map per finding), --sr DICOM Structured Reports (TID 1500) and --gsps "
        "presentation states for DICOM inputs; --seg asks cxr_segment (a Mask R-CNN) instead and writes a DICOM "
        "Segmentation per DICOM study. Needs only the client extra (no torch).",
    )
    p.add_argument("paths", type=Path, nargs="+", help="image files or folders (searched recursively)")
    p.add_argument("--url", default=LOCAL_URL, help=f"server gRPC address host:port (default {LOCAL_URL})")
    p.add_argument("--serve", type=Path, default=None, metavar="MODEL_REPOSITORY",
                   help="start the embedded server on this repository for the run (needs the serve extra) instead of --url")
    p.add_argument("--json", action="store_true", help="print results as JSON on stdout")
    p.add_argument("--png", type=Path, default=None, metavar="DIR", help="write annotated PNGs into DIR")
    p.add_argument("--saliency", type=Path, default=None, metavar="DIR",
                   help="also explain each finding shown (a D-RISE saliency map per finding, served by cxr_explain) and "
                   "write one overlay PNG per study into DIR: a panel per finding with its heat map, box, label and "
                   "colour bar; for a DICOM study also a Parametric Map and a Secondary Capture per finding "
                   "(NAME.pmK.dcm, NAME.scK.dcm), stored with --stow")
    p.add_argument("--saliency-masks", type=int, default=None, metavar="N",
                   help="D-RISE masked passes per study with --saliency (default: the server's); time grows with N")
    p.add_argument("--seg", type=Path, default=None, metavar="DIR",
                   help="ask cxr_segment (a Mask R-CNN's ensemble) and write a DICOM Segmentation per DICOM study with a "
                   "finding shown (NAME.seg.dcm, one segment per finding class) into DIR, stored with --stow; --png "
                   "then draws each finding's mask outline")
    p.add_argument("--sr", type=Path, default=None, metavar="DIR", help="write DICOM SR (TID 1500) files into DIR")
    p.add_argument("--gsps", type=Path, default=None, metavar="DIR", help="write DICOM GSPS overlays into DIR")
    p.add_argument("--stow", default=None, metavar="URL",
                   help="also store each DICOM study's SR (GSPS with --gsps, maps with --saliency, SEG with --seg) with "
                   "DICOMweb STOW-RS at this service root, e.g. http://pacs:8042/dicom-web")
    p.add_argument("--dicomweb-auth", type=Path, default=None, metavar="FILE",
                   help="file (mode 600) with 'basic USER:PASSWORD' or 'bearer TOKEN' for --stow; else "
                   "$CXR_DICOMWEB_AUTH if set. Never on the command line")
    p.add_argument("--score-threshold", type=float, default=None, help="server-side score threshold for this call")
    p.add_argument("--min-score", type=float, default=0.3, help="only show/draw findings at or above this score (default 0.3)")
    p.add_argument("--timeout", type=float, default=None,
                   help=f"seconds per study, retries included (default {PREDICT_TIMEOUT_S:.0f}, "
                   f"{SALIENCY_TIMEOUT_S:.0f} with --saliency)")
    add_tls_arguments(p)
    p.set_defaults(func=cmd_predict)
    add_viewer_parser(sub)  # OHIF over Orthanc: the standard library and pydicom only
    try:
        from cxr.client.pacs_cli import add_pacs_parser  # needs the client extra (pynetdicom, highdicom)
    except ImportError:
        return
    add_pacs_parser(sub)
