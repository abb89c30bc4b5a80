"""``cxr pacs`` on the command line: options -> :class:`~cxr.client.pacs.PacsConfig` -> a running bridge.

Registered on the top-level parser by :mod:`cxr.cli` when the client extra is
installed (pynetdicom, highdicom).
"""

from __future__ import annotations

import argparse
import threading
from pathlib import Path

from cxr.client.destinations import AUTH_ENV, read_auth
from cxr.client.pacs import PacsBridge, PacsConfig, _check_ae
from cxr.client.tls import add_tls_arguments, tls_options
from cxr.contract import SEGMENT
from cxr.errors import UsageError

__all__ = ["add_pacs_parser", "cmd_pacs", "parse_forward"]


def parse_forward(text: str) -> tuple[str, int, str]:
    """``HOST:PORT:AE`` as (host, port, AE title); ArgumentTypeError names the problem."""
    parts = text.rsplit(":", 2)  # rsplit: a bracket-free IPv6 host still has its colons
    if len(parts) != 3 or not all(p.strip() for p in parts):
        raise argparse.ArgumentTypeError(f"expected HOST:PORT:AE, e.g. 10.0.0.5:104:PACS, got {text!r}")
    host, port, ae = (p.strip() for p in parts)
    host = host.strip("[]")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"PORT in HOST:PORT:AE must be 1..65535, got {port!r} in {text!r}")
    try:
        ae = _check_ae(ae, "AE")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc} (in {text!r})") from exc
    return host, int(port), ae


def add_pacs_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``cxr pacs`` on the CLI's subparsers; sets ``func=cmd_pacs``."""
    d = PacsConfig(allow_any=True)  # defaults shown in --help come from the one config
    p = sub.add_parser(
        "pacs",
        help="DICOM bridge: receive chest films from PACS, send back SR/GSPS results",
        description="Run a DICOM Storage SCP that receives CR/DX chest radiographs (C-STORE), spools them to disk, "
        "runs them through the detector and C-STOREs a TID 1500 Structured Report (and with --gsps a presentation "
        "state) to the --forward destination, or stores them with DICOMweb STOW-RS at --forward-dicomweb. Every "
        "transfer syntax that decodes here is accepted for CR, DX and Secondary Capture, so the PACS need not "
        "transcode. Runs until Ctrl-C/SIGTERM; studies left in the spool are delivered at the next start. Only "
        "calling AE titles given with --allow-ae are accepted (or any with --allow-any).",
    )
    p.add_argument("--port", type=int, default=d.port, help=f"port to listen on (default {d.port})")
    p.add_argument("--ae-title", default=d.ae_title, help=f"our AE title (default {d.ae_title})")
    p.add_argument("--host", default=d.host, help=f"address to bind (default {d.host})")
    p.add_argument("--url", default=d.detector_url, help=f"detector gRPC address host:port (default {d.detector_url})")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--forward", type=parse_forward, metavar="HOST:PORT:AE",
                       help="where results are C-STOREd, e.g. 10.0.0.5:104:PACS")
    where.add_argument("--forward-dicomweb", metavar="URL",
                       help="store results with STOW-RS at this DICOMweb root instead, e.g. http://pacs:8042/dicom-web")
    p.add_argument("--dicomweb-auth", type=Path, default=None, metavar="FILE",
                   help=f"file (mode 600) holding 'basic USER:PASSWORD' or 'bearer TOKEN' for --forward-dicomweb; "
                   f"else ${AUTH_ENV} if set. Never on the command line")
    p.add_argument("--allow-ae", action="append", default=[], metavar="AE", help="a calling AE title to accept (repeatable)")
    p.add_argument("--allow-any", action="store_true", help="accept any calling AE title (trusted networks only)")
    p.add_argument("--spool", type=Path, default=d.spool, help=f"spool folder; holds patient data (default {d.spool})")
    p.add_argument("--gsps", action="store_true", help="also send a Grayscale Softcopy Presentation State")
    p.add_argument("--saliency", action="store_true",
                   help="also ask the server's cxr_explain for a D-RISE saliency map per finding and send each as a "
                   "Parametric Map and a Secondary Capture (nine at most); raise --timeout to match")
    p.add_argument("--seg", action="store_true",
                   help="ask the server's cxr_segment (a Mask R-CNN) instead of cxr_detector and send the masks as a DICOM "
                   "Segmentation (one segment per finding class) with the SR")
    p.add_argument("--modality", action="append", default=None, metavar="M",
                   help=f"modality to read (repeatable; default {' '.join(d.modalities)})")
    p.add_argument("--queue-size", type=int, default=d.queue_size, help=f"studies pending at most (default {d.queue_size})")
    p.add_argument("--retry-backoff", type=float, default=d.retry_backoff_s, help="first retry wait in s (doubles)")
    p.add_argument("--timeout", type=float, default=d.timeout_s, help="seconds per detector call / network operation")
    add_tls_arguments(p)  # one definition for `cxr predict` and `cxr pacs`
    p.set_defaults(func=cmd_pacs)
    return p


def cmd_pacs(args: argparse.Namespace) -> int:
    """Run the bridge until SIGINT/SIGTERM; prints where it listens and, at the end, its counters."""
    import signal

    from cxr.client.sdk import DetectorClient

    forward = {"forward": args.forward} if args.forward else {
        "forward_dicomweb": args.forward_dicomweb, "dicomweb_headers": read_auth(args.dicomweb_auth)}
    config = PacsConfig(port=args.port, ae_title=args.ae_title, host=args.host, allowed_aes=tuple(args.allow_ae),
                        allow_any=args.allow_any, spool=args.spool, gsps=args.gsps, saliency=args.saliency, seg=args.seg,
                        modalities=tuple(args.modality or PacsConfig.modalities), queue_size=args.queue_size,
                        retry_backoff_s=args.retry_backoff, detector_url=args.url, timeout_s=args.timeout,
                        detector_tls=tls_options(args), **forward)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    model = {"model_name": SEGMENT} if config.seg else {}
    with DetectorClient(url=args.url, timeout_s=args.timeout, **model, **config.detector_tls) as client:
        if config.seg:
            from cxr.client.cli import require_segment

            require_segment(client, args.url)
        bridge = PacsBridge(config, client)
        try:
            bridge.start()
        except OSError as exc:  # port in use, address not local, no permission for a port < 1024
            bridge.stop()
            raise UsageError(f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}") from exc
        try:
            _serve_until(stop, bridge, config, args.url)
        finally:
            bridge.stop()
    print("stopped: " + ", ".join(f"{k} {v}" for k, v in bridge.stats.items()))
    return 0


def _serve_until(stop: threading.Event, bridge: PacsBridge, config: PacsConfig, url: str) -> None:
    """Print where the bridge listens, then wait for SIGINT/SIGTERM."""
    host, port = bridge.address
    who = "any calling AE" if config.allow_any else "calling AEs " + ", ".join(config.allowed_aes)
    print(f"cxr pacs: {config.ae_title} listening on {host}:{port} ({who})")
    print(f"  detector  {url}")
    how = "STOW-RS" if config.forward_dicomweb else "C-STORE"
    print(f"  results   {bridge.destination} ({how}, SR{' + GSPS' if config.gsps else ''})")
    if config.seg:
        print("  masks     from cxr_segment, sent as a DICOM Segmentation with the SR")
    if config.saliency:
        print("  saliency  a D-RISE map per finding from cxr_explain, sent as Parametric Map and Secondary Capture")
    print(f"  accepts   CR, DX, SC in {len(bridge.syntaxes)} transfer syntaxes")
    print(f"  spool     {config.spool.resolve()}")
    print("Ctrl-C to stop.", flush=True)
    while not stop.wait(1.0):  # a timed wait keeps the main thread responsive to signals
        pass
