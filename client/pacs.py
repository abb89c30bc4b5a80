"""``cxr pacs``: a DICOM bridge between a PACS and the detector.

A modality or PACS pushes chest radiographs to this Storage SCP (C-STORE); each
accepted image is written to a spool on disk, acknowledged, run through the
detector, and its results — a TID 1500 Structured Report and, with ``gsps=True``, a
presentation state — are C-STOREd to the destination AE (usually the same PACS), or
stored with DICOMweb STOW-RS (``forward_dicomweb``)::

    modality ──C-STORE──► PacsBridge SCP ──► spool/pending ──► worker ──► DetectorClient
                                                                   └──C-STORE or STOW-RS SR/GSPS──► destination

Association: for each chest storage class (CR, DX for presentation and for
processing, Secondary Capture) every transfer syntax this install decodes
(:func:`cxr.decode.transfer_syntaxes.decodable`), so a PACS sends what it stores without
transcoding; every other storage class is accepted only to answer its C-STORE with
0x0122 "SOP class not supported" and a comment saying what the bridge takes, so a
misrouted MR is a clear failure at the sender, and nothing is spooled.

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
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom import sop_class

from cxr.client.destinations import RESULT_SYNTAXES, CStoreDestination, StowDestination
from cxr.client.pacs_queue import (COMPREHENSIVE_3D_SR, GSPS, QueueState, Spool, WorkQueue, Worker, is_valid_uid,
                                   study_id)
from cxr.client.pacs_results import result_classes
from cxr.contract import LOCAL_URL, SEGMENT
from cxr.errors import InvalidOptionError
from cxr.decode.transfer_syntaxes import decodable

__all__ = ["COMPREHENSIVE_3D_SR", "GSPS", "STORAGE_CLASSES", "PacsBridge", "PacsConfig", "accepted_syntaxes",
           "skip_reason"]

log = logging.getLogger("cxr.pacs")

# What a chest-radiograph sender may push.  Secondary Capture is accepted at the
# association level (some gateways wrap films in it); the Modality filter decides.
STORAGE_CLASSES = (sop_class.ComputedRadiographyImageStorage, sop_class.DigitalXRayImageStorageForPresentation,
                   sop_class.DigitalXRayImageStorageForProcessing, sop_class.SecondaryCaptureImageStorage)
# C-STORE statuses we answer with (PS3.4 B.2.3; 0x0122 is PS3.7 C.4.2's "SOP class not supported").
SUCCESS, OUT_OF_RESOURCES, CANNOT_UNDERSTAND, SOP_CLASS_NOT_SUPPORTED = 0x0000, 0xA700, 0xC000, 0x0122


def accepted_syntaxes() -> tuple[str, ...]:
    """Transfer syntaxes offered for the chest storage classes: those decodable here at 8 and 16 bits."""
    at16 = set(decodable(16))
    return tuple(uid for uid in decodable(8) if uid in at16)


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
    forward: tuple[str, int, str] = ("127.0.0.1", 11113, "PACS")  # destination host, port, AE title (C-STORE)
    forward_dicomweb: str | None = None  # a DICOMweb root for STOW-RS instead of C-STORE to `forward`
    dicomweb_headers: dict[str, str] = field(default_factory=dict, repr=False)  # Authorization: never printed
    spool: Path = field(default_factory=lambda: Path("pacs-spool"))  # holds PHI until delivered
    modalities: tuple[str, ...] = ("CR", "DX")  # what the detector was trained on
    body_parts: tuple[str, ...] = ("CHEST", "")  # "" = attribute absent or empty (often unset)
    views: tuple[str, ...] = ("PA", "AP", "")  # frontal films only; laterals are not read
    queue_size: int = 64  # studies accepted but not delivered; beyond it senders get 0xA700
    gsps: bool = False  # also send a presentation state (for viewers without SR display)
    saliency: bool = False  # ask cxr_explain for a D-RISE map per finding; send each as Parametric Map + Secondary Capture
    seg: bool = False  # ask cxr_segment (a Mask R-CNN) and send its masks as a DICOM Segmentation with the SR
    retry_backoff_s: float = 2.0  # first retry wait; doubles per attempt
    max_attempts_per_pass: int = 3  # then the study rests for pass_pause_s (and survives restarts)
    detector_url: str = LOCAL_URL
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
        if self.forward_dicomweb is not None:
            url = str(self.forward_dicomweb)
            if not url.startswith(("http://", "https://")) or "@" in url.split("/")[2]:
                raise InvalidOptionError(f"--forward-dicomweb must be an http(s) URL without credentials (put them in "
                                         f"--dicomweb-auth FILE), got {url.split('@')[-1]!r}")
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
        if self.seg and self.saliency:
            raise InvalidOptionError("seg and saliency ask two different models (cxr_segment, cxr_explain): choose one")
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

    ``client`` is any object with ``predict(study, timeout_s=...)`` (a :class:`~cxr.client.study.Study` of
    the spooled bytes, forwarded as they arrived) returning a
    :class:`~cxr.client.StudyResult` (a :class:`~cxr.client.DetectorClient`), and with
    ``config.saliency`` ``explain`` (the same, returning an ExplainedResult); when
    None, one is built for ``config.detector_url`` (asking ``cxr_segment`` with ``config.seg``)
    and closed by :meth:`stop`.
    """

    def __init__(self, config: PacsConfig, client: Any | None = None) -> None:
        self.config = config
        self._own_client = client is None
        if client is None:
            from cxr.client.sdk import DetectorClient  # tritonclient: only when we build it

            model = {"model_name": SEGMENT} if config.seg else {}
            client = DetectorClient(url=config.detector_url, timeout_s=config.timeout_s, **model, **config.detector_tls)
        self.client = client
        self.spool = Spool(config.spool)
        self._queue = WorkQueue(config.queue_size)
        self._stopped = False
        self._stats = dict.fromkeys(("received", "skipped", "unsupported", "duplicates", "refused", "delivered", "failed",
                                     "retries"), 0)
        self._stats_lock = threading.Lock()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._server: Any = None
        self._scp = AE(ae_title=config.ae_title)
        self.syntaxes = accepted_syntaxes()
        for uid in STORAGE_CLASSES:  # whatever the PACS stored, if it decodes here: no transcoding needed
            self._scp.add_supported_context(uid, list(self.syntaxes))
        for context in AllStoragePresentationContexts:  # accepted only to refuse them clearly at C-STORE
            if context.abstract_syntax not in STORAGE_CLASSES:
                self._scp.add_supported_context(context.abstract_syntax, list(self.syntaxes))
        self._scp.add_supported_context(sop_class.Verification)  # C-ECHO: how PACS admins test a node
        # pynetdicom reads an empty list as "anyone": reached only through allow_any, which wins.
        self._scp.require_calling_aet = [] if config.allow_any else list(config.allowed_aes)
        self._scp.require_called_aet = True  # a misrouted sender is told so, not silently served
        self._scu = AE(ae_title=config.ae_title)
        for uid in result_classes(config):
            self._scu.add_requested_context(uid, list(RESULT_SYNTAXES))
        for ae in (self._scp, self._scu):
            ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = config.timeout_s
        self._scu.connection_timeout = min(config.timeout_s, 10.0)
        if config.forward_dicomweb is not None:
            self.destination: Any = StowDestination(config.forward_dicomweb, headers=config.dicomweb_headers,
                                                    timeout_s=config.timeout_s)
        else:
            self.destination = CStoreDestination(self._scu, config.forward)

    # ---------------------------------------------------------------- lifecycle

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) the SCP listens on (the real port when ``config.port`` is 0)."""
        if self._server is None:
            raise RuntimeError("PacsBridge is not started")
        return self._server.server_address[:2]

    @property
    def stats(self) -> dict[str, int]:
        """Counters since start: received, skipped, unsupported (SOP class), duplicates, refused, delivered,
        failed, retries."""
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
        worker = Worker(self.config, self.client, self.spool, self._queue, self.destination, self._count, self._stop)
        self._worker = threading.Thread(target=worker.run, name="cxr-pacs-worker", daemon=True)
        self._worker.start()
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_REJECTED, self._on_rejected)]
        self._server = self._scp.start_server((self.config.host, self.config.port), block=False,
                                              evt_handlers=handlers)
        host, port = self.address
        log.info("listening as %s on %s:%d (%d transfer syntaxes), results to %s", self.config.ae_title, host, port,
                 len(self.syntaxes), self.destination)
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

    def _on_store(self, event: Any) -> int | pydicom.Dataset:
        """EVT_C_STORE: filter, spool durably, queue.  Returns the C-STORE status."""
        sop = event.context.abstract_syntax
        if sop not in STORAGE_CLASSES:  # decided from the context: the data is never decoded
            self._count("unsupported")
            name = pydicom.uid.UID(sop).name
            log.warning("%s from AE %r refused: not a chest radiograph storage class", name,
                        event.assoc.requestor.ae_title)
            status = pydicom.Dataset()
            status.Status = SOP_CLASS_NOT_SUPPORTED
            status.ErrorComment = (f"cxr pacs reads CR, DX and Secondary Capture chest films; not {name}")[:64]
            return status
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
        log.info("study %s received: %s %s in %s from AE %r, spooled (%d pending)", sid, ds.get("Modality", "?"),
                 ds.get("ViewPosition", "") or "-", pydicom.uid.UID(event.context.transfer_syntax).name,
                 event.assoc.requestor.ae_title, len(self._queue))
        return SUCCESS
