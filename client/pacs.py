"""``cxr pacs``: a DICOM bridge between a PACS and the detector.

A modality or PACS pushes chest radiographs to this Storage SCP (C-STORE); each
accepted image is written to a spool on disk, acknowledged, run through the
detector, and its results — a TID 1500 Structured Report and, with ``gsps=True``, a
presentation state — are C-STOREd to the destination AE (usually the same PACS)::

    modality ──C-STORE──► PacsBridge SCP ──► spool/pending ──► worker ──► DetectorClient
                                                                   └──C-STORE SR/GSPS──► destination

Guarantees: an image is on disk (fsync'ed) before the sender is told "success";
nothing is dropped when the detector or the destination is down (retries with
backoff, and everything left in the spool is re-queued at the next start); the same
SOPInstanceUID is processed once; a study the detector refuses as invalid is moved
to ``spool/failed/`` with a reason.  Logs ("cxr.pacs") name a study only by a short
hash of its SOPInstanceUID — never patient attributes.

No torch here: this module ships in the ``[client]`` extra.
"""

from __future__ import annotations

import argparse
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pynetdicom import AE, evt
from pynetdicom import sop_class

from cxr.client.pacs_queue import (COMPREHENSIVE_3D_SR, GSPS, QueueState, Spool, WorkQueue, Worker, is_valid_uid,
                                   study_id)
from cxr.client.tls import add_tls_arguments, tls_options
from cxr.errors import InvalidOptionError, UsageError

__all__ = ["COMPREHENSIVE_3D_SR", "GSPS", "PacsBridge", "PacsConfig", "add_pacs_parser", "cmd_pacs", "parse_forward",
           "skip_reason"]

log = logging.getLogger("cxr.pacs")

# What a chest-radiograph sender may push.  Secondary Capture is accepted at the
# association level (some gateways wrap films in it); the Modality filter decides.
STORAGE_CLASSES = (sop_class.ComputedRadiographyImageStorage, sop_class.DigitalXRayImageStorageForPresentation,
                   sop_class.DigitalXRayImageStorageForProcessing, sop_class.SecondaryCaptureImageStorage)
# C-STORE statuses we answer with (PS3.4 B.2.3).
SUCCESS, OUT_OF_RESOURCES, CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xC000


def _check_ae(value: object, what: str) -> str:
    """``value`` stripped, if it is a valid AE title (PS3.5 6.2: <= 16 chars of the
    default repertoire, no backslash or control characters, not only spaces)."""
    text = value.strip() if isinstance(value, str) else ""
    if not text or len(value) > 16 or "\\" in value or any(ord(c) < 32 or ord(c) > 126 for c in value):
        raise InvalidOptionError(f"{what} {value!r} is not a valid DICOM AE title: "
                         "1-16 printable ASCII characters, no backslash")
    return text


@dataclass
class PacsConfig:
    """Everything one bridge run needs.  Validated on construction."""

    port: int = 11112  # the registered DICOM port; 0 picks a free one (tests)
    ae_title: str = "CXR"  # our AE title: senders must call it (require_called_aet)
    host: str = "127.0.0.1"  # loopback unless told: DICOM upper layer has no authentication
    allowed_aes: tuple[str, ...] = ()  # calling AE titles let in; empty refuses everyone...
    allow_any: bool = False  # ...unless this says so explicitly
    forward: tuple[str, int, str] = ("127.0.0.1", 11113, "PACS")  # destination host, port, AE title
    spool: Path = field(default_factory=lambda: Path("pacs-spool"))  # holds PHI until delivered
    modalities: tuple[str, ...] = ("CR", "DX")  # what the detector was trained on
    body_parts: tuple[str, ...] = ("CHEST", "")  # "" = attribute absent or empty (often unset)
    views: tuple[str, ...] = ("PA", "AP", "")  # frontal films only; laterals are not read
    queue_size: int = 64  # studies accepted but not delivered; beyond it senders get 0xA700
    gsps: bool = False  # also send a presentation state (for viewers without SR display)
    retry_backoff_s: float = 2.0  # first retry wait; doubles per attempt
    max_attempts_per_pass: int = 3  # then the study rests for pass_pause_s (and survives restarts)
    detector_url: str = "127.0.0.1:8001"
    # TLS to the detector as DetectorClient keywords (ssl, root_certificates,
    # certificate_chain, private_key); empty = plaintext, fine on loopback only.
    detector_tls: dict[str, Any] = field(default_factory=dict)
    timeout_s: float = 60.0  # per detector call and per DICOM network operation
    pass_pause_s: float = 60.0  # between passes while the detector/destination stays down

    def __post_init__(self) -> None:
        self.ae_title = _check_ae(self.ae_title, "ae_title")
        self.allowed_aes = tuple(_check_ae(a, "allowed AE") for a in self.allowed_aes)
        if not self.allowed_aes and not self.allow_any:
            # pynetdicom treats an empty allow list as "everyone"; we never default open.
            raise InvalidOptionError("no calling AE title is allowed, so every sender would be refused: "
                             "list the senders with --allow-ae AE (repeatable) or pass --allow-any")
        if not (isinstance(self.port, int) and 0 <= self.port <= 65535):
            raise InvalidOptionError(f"port must be 0..65535, got {self.port!r}")
        host, port, ae = self.forward
        if not host or not (isinstance(port, int) and 1 <= port <= 65535):
            raise InvalidOptionError(f"forward must be (host, port 1..65535, AE title), got {self.forward!r}")
        self.forward = (str(host), port, _check_ae(ae, "forward AE"))
        self.spool = Path(self.spool)
        self.modalities = tuple(m.strip().upper() for m in self.modalities)
        self.body_parts = tuple(b.strip().upper() for b in self.body_parts)
        self.views = tuple(v.strip().upper() for v in self.views)
        for name in ("queue_size", "max_attempts_per_pass"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise InvalidOptionError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        for name in ("retry_backoff_s", "pass_pause_s"):
            if not getattr(self, name) >= 0:
                raise InvalidOptionError(f"{name} must be >= 0 seconds, got {getattr(self, name)!r}")
        if not self.timeout_s > 0:
            raise InvalidOptionError(f"timeout_s must be > 0 seconds, got {self.timeout_s!r}")


def skip_reason(ds: pydicom.Dataset, config: PacsConfig) -> str | None:
    """Why ``ds`` is not for the detector, or None when it is.

    Only coded, non-identifying attributes are read, so the reason is safe to log.
    """
    for keyword, allowed in (("Modality", config.modalities), ("BodyPartExamined", config.body_parts),
                             ("ViewPosition", config.views)):
        value = str(ds.get(keyword, "") or "").strip().upper()
        if value not in allowed:
            shown = ", ".join(a or "(absent)" for a in allowed)
            return f"{keyword} {value or '(absent)'!r} not in {shown}"
    return None


class PacsBridge:
    """Storage SCP + spool + worker that forwards detector results.  See the module doc.

    ``client`` is any object with ``predict(dataset, timeout_s=...)`` returning a
    :class:`~cxr.client.StudyResult` (a :class:`~cxr.client.DetectorClient`); when
    None, one is built for ``config.detector_url`` and closed by :meth:`stop`.
    """

    def __init__(self, config: PacsConfig, client: Any | None = None) -> None:
        self.config = config
        self._own_client = client is None
        if client is None:
            from cxr.client.sdk import DetectorClient  # tritonclient: only when we build it

            client = DetectorClient(url=config.detector_url, timeout_s=config.timeout_s, **config.detector_tls)
        self.client = client
        self.spool = Spool(config.spool)
        self._queue = WorkQueue(config.queue_size)
        self._stopped = False
        self._stats = dict.fromkeys(("received", "skipped", "duplicates", "refused", "delivered", "failed", "retries"), 0)
        self._stats_lock = threading.Lock()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._server: Any = None
        self._scp = AE(ae_title=config.ae_title)
        for uid in STORAGE_CLASSES:
            self._scp.add_supported_context(uid)  # pynetdicom's default transfer syntaxes
        self._scp.add_supported_context(sop_class.Verification)  # C-ECHO: how PACS admins test a node
        # pynetdicom reads an empty list as "anyone": reached only through allow_any, which wins.
        self._scp.require_calling_aet = [] if config.allow_any else list(config.allowed_aes)
        self._scp.require_called_aet = True  # a misrouted sender is told so, not silently served
        self._scu = AE(ae_title=config.ae_title)
        self._scu.add_requested_context(COMPREHENSIVE_3D_SR)
        if config.gsps:
            self._scu.add_requested_context(GSPS)
        for ae in (self._scp, self._scu):
            ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = config.timeout_s
        self._scu.connection_timeout = min(config.timeout_s, 10.0)

    # ---------------------------------------------------------------- lifecycle

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) the SCP listens on (the real port when ``config.port`` is 0)."""
        if self._server is None:
            raise RuntimeError("PacsBridge is not started")
        return self._server.server_address[:2]

    @property
    def stats(self) -> dict[str, int]:
        """Counters since start: received, skipped, duplicates, refused, delivered, failed, retries."""
        with self._stats_lock:
            return dict(self._stats)

    def start(self) -> PacsBridge:
        """Re-queue what the spool still holds, start the worker, then listen.  Non-blocking."""
        if self._server is not None or self._stopped:
            raise RuntimeError("PacsBridge already started (a stopped bridge is not restarted: make a new one)")
        self._stop.clear()
        recovered = self.spool.recover()
        for uid in recovered:
            self._queue.put(uid)
        if recovered:
            log.info("re-queued %d studies left in the spool %s", len(recovered), self.spool.root)
        worker = Worker(self.config, self.client, self.spool, self._queue, self._scu, self._count, self._stop)
        self._worker = threading.Thread(target=worker.run, name="cxr-pacs-worker", daemon=True)
        self._worker.start()
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_REJECTED, self._on_rejected)]
        self._server = self._scp.start_server((self.config.host, self.config.port), block=False,
                                              evt_handlers=handlers)
        host, port = self.address
        log.info("listening as %s on %s:%d, forwarding to %s@%s:%d", self.config.ae_title, host, port,
                 self.config.forward[2], self.config.forward[0], self.config.forward[1])
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop listening and the worker.  A study in flight finishes or stays in the spool."""
        self._stop.set()
        self._stopped = True
        if self._server is not None:
            self._server.shutdown()  # closes the socket, aborts open associations
            self._server = None
        if self._worker is not None:
            self._worker.join(self.config.timeout_s + 5.0 if timeout is None else timeout)
            self._worker = None
        if self._own_client:
            self.client.close()
            self._own_client = False  # closed once

    def wait_idle(self, timeout: float) -> bool:
        """True once every accepted study is delivered or failed; False after ``timeout`` s."""
        return self._queue.wait_idle(timeout)

    def __enter__(self) -> PacsBridge:
        return self.start() if self._server is None else self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _count(self, key: str) -> None:
        with self._stats_lock:
            self._stats[key] += 1

    # ---------------------------------------------------------------- receiving (association threads)

    def _on_rejected(self, event: Any) -> None:
        req = event.assoc.requestor
        log.warning("association from AE %r at %s refused (calling AE not allowed or wrong called AE)",
                    req.ae_title, req.address)

    def _on_store(self, event: Any) -> int:
        """EVT_C_STORE: filter, spool durably, queue.  Returns the C-STORE status."""
        try:
            ds = event.dataset
        except Exception:  # noqa: BLE001 - any decoding failure is the sender's data, not our bug
            log.warning("instance from AE %r could not be decoded; refused", event.assoc.requestor.ae_title)
            return CANNOT_UNDERSTAND
        uid = ds.get("SOPInstanceUID")
        uid = str(uid) if uid is not None else ""
        if not is_valid_uid(uid):
            log.warning("instance without a valid SOPInstanceUID from AE %r refused", event.assoc.requestor.ae_title)
            return CANNOT_UNDERSTAND
        sid = study_id(uid)
        self._count("received")
        reason = skip_reason(ds, self.config)
        if reason is not None:
            self._count("skipped")
            log.info("study %s skipped: %s", sid, reason)
            return SUCCESS  # not ours to read, but the sender did nothing wrong
        state = self._queue.reserve(uid)
        if state is QueueState.RESERVED and (self.spool.is_done(uid) or self.spool.is_failed(uid)):
            self._queue.cancel(uid)
            state = QueueState.DELIVERED if self.spool.is_done(uid) else QueueState.FAILED
        if state is QueueState.FULL:
            self._count("refused")
            log.warning("study %s refused: queue full (%d pending); the sender should retry", sid, len(self._queue))
            return OUT_OF_RESOURCES
        if state is not QueueState.RESERVED:
            self._count("duplicates")
            log.info("study %s received again: %s; acknowledged, not processed again", sid, state.description)
            return SUCCESS
        try:
            self.spool.write_pending(uid, event.encoded_dataset())
        except OSError as exc:  # disk full, permissions: the sender keeps the image and retries
            self._queue.cancel(uid)
            self._count("refused")
            log.error("study %s refused: cannot write the spool (%s)", sid, exc.strerror or type(exc).__name__)
            return OUT_OF_RESOURCES
        self._queue.put(uid)
        log.info("study %s received: %s %s from AE %r, spooled (%d pending)", sid, ds.get("Modality", "?"),
                 ds.get("ViewPosition", "") or "-", event.assoc.requestor.ae_title, len(self._queue))
        return SUCCESS

# -------------------------------------------------------------------- command line


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
        "state) to the --forward destination. Runs until Ctrl-C/SIGTERM; studies left in the spool are delivered "
        "at the next start. Only calling AE titles given with --allow-ae are accepted (or any with --allow-any).",
    )
    p.add_argument("--port", type=int, default=d.port, help=f"port to listen on (default {d.port})")
    p.add_argument("--ae-title", default=d.ae_title, help=f"our AE title (default {d.ae_title})")
    p.add_argument("--host", default=d.host, help=f"address to bind (default {d.host})")
    p.add_argument("--url", default=d.detector_url, help=f"detector gRPC address host:port (default {d.detector_url})")
    p.add_argument("--forward", type=parse_forward, required=True, metavar="HOST:PORT:AE",
                   help="where results are C-STOREd, e.g. 10.0.0.5:104:PACS")
    p.add_argument("--allow-ae", action="append", default=[], metavar="AE", help="a calling AE title to accept (repeatable)")
    p.add_argument("--allow-any", action="store_true", help="accept any calling AE title (trusted networks only)")
    p.add_argument("--spool", type=Path, default=d.spool, help=f"spool folder; holds patient data (default {d.spool})")
    p.add_argument("--gsps", action="store_true", help="also send a Grayscale Softcopy Presentation State")
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

    config = PacsConfig(port=args.port, ae_title=args.ae_title, host=args.host, allowed_aes=tuple(args.allow_ae),
                        allow_any=args.allow_any, forward=args.forward, spool=args.spool, gsps=args.gsps,
                        modalities=tuple(args.modality or PacsConfig.modalities), queue_size=args.queue_size,
                        retry_backoff_s=args.retry_backoff, detector_url=args.url, timeout_s=args.timeout,
                        detector_tls=tls_options(args))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with DetectorClient(url=args.url, timeout_s=args.timeout, **config.detector_tls) as client:
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
    print(f"  results   {config.forward[2]}@{config.forward[0]}:{config.forward[1]} (SR{' + GSPS' if config.gsps else ''})")
    print(f"  spool     {config.spool.resolve()}")
    print("Ctrl-C to stop.", flush=True)
    while not stop.wait(1.0):  # a timed wait keeps the main thread responsive to signals
        pass
