"""The PACS bridge's outbound half: everything after a C-STORE is acknowledged — the
on-disk spool, the work queue, the :class:`Worker` (detector, SR/GSPS, retries) and
delivery of results to the destination AE.

The spool is the source of truth; the queue only says what to do next and when.
Layout under the spool root (created ``0o700``: the images carry patient data)::

    tmp/<uid>.<rand>.part   an image being written (never trusted: removed at start-up)
    pending/<uid>.dcm       received, acknowledged, not yet delivered
    results/<uid>/*.dcm     its SR (and GSPS), built once: a retry or a restart re-sends these
                            very instances (same SOPInstanceUIDs), so a PACS stores them once
    done/<uid>              marker: results delivered (idempotency record)
    failed/<uid>.dcm        permanently failed image, with failed/<uid>.reason.txt

Files are named by the full SOPInstanceUID (digits and dots, validated), never by a
short hash: the done markers must not collide across millions of studies.  Logs use
:func:`study_id`, a short hash, so they never carry the UID itself.

Write order is what makes the bridge lossless: an image is fsync'ed into ``pending/``
before the C-STORE is acknowledged; the done marker is fsync'ed before the pending
image is deleted.  A crash between delivering and marking done re-delivers the study
on the next start (at-least-once), never loses it.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import io
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import pydicom
from pynetdicom.sop_class import Comprehensive3DSRStorage, GrayscaleSoftcopyPresentationStateStorage

from cxr.client.destinations import DeliveryError
from cxr.client.pacs_results import ask, describe_outputs, result_objects
from cxr.client.errors import DetectorError
from cxr.client.study import Study
from cxr.errors import InvalidImageError
from cxr.vocab import ClosedVocabulary

if TYPE_CHECKING:  # pacs imports this module; the config type is for readers and checkers
    from cxr.client.pacs import PacsConfig

__all__ = ["COMPREHENSIVE_3D_SR", "GSPS", "QueueState", "Spool", "WorkQueue", "Worker", "is_valid_uid", "study_id"]

log = logging.getLogger("cxr.pacs")

COMPREHENSIVE_3D_SR, GSPS = Comprehensive3DSRStorage, GrayscaleSoftcopyPresentationStateStorage  # the results
_POLL_S = 0.2  # how often an idle worker notices stop()
# The SDK retries only UNAVAILABLE inside one call.  Across calls the bridge also waits
# out an overloaded server: the study is fine, the moment was not.
_TRANSIENT = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"})

# DICOM UI value: components of digits separated by dots, at most 64 characters (PS3.5 9.1).
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class QueueState(ClosedVocabulary):
    """queue state: what the bridge knows of an arriving SOPInstanceUID."""

    RESERVED = "reserved"  # new: a slot is claimed for it; write it to the spool, then put() it
    QUEUED = "queued"  # already received and waiting in the queue
    FULL = "full"  # no slot left: the sender is told 0xA700 and retries later
    DELIVERED = "delivered"  # results were delivered before (spool/done)
    FAILED = "failed"  # it failed permanently before (spool/failed)

    @property
    def description(self) -> str:
        return {QueueState.QUEUED: "already queued", QueueState.DELIVERED: "already delivered",
                QueueState.FAILED: "failed earlier (see spool/failed)"}.get(self, self.value)


def study_id(sop_instance_uid: str) -> str:
    """Short, PHI-free log identifier: the same hash the SDK logs (cxr.client.requests)."""
    return hashlib.sha256(sop_instance_uid.encode()).hexdigest()[:10]


def is_valid_uid(value: object) -> bool:
    """True for a syntactically valid DICOM UID (also what makes it a safe file name)."""
    return isinstance(value, str) and 0 < len(value) <= 64 and _UID.match(value) is not None


def _fsync_dir(path: Path) -> None:
    # A rename is durable only once the directory entry is on disk.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """The on-disk spool (see the module docstring for the layout).

    Thread-safe for distinct UIDs; the bridge guarantees one writer per UID through
    :meth:`WorkQueue.reserve`.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.tmp, self.pending, self.done, self.failed, self.results = (
            self.root / d for d in ("tmp", "pending", "done", "failed", "results"))
        for d in (self.root, self.tmp, self.pending, self.done, self.failed, self.results):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)

    def pending_path(self, uid: str) -> Path:
        return self.pending / f"{uid}.dcm"

    def write_pending(self, uid: str, data: bytes) -> Path:
        """Store ``data`` (a DICOM Part 10 file) as pending, durably, before it is acknowledged."""
        part = self.tmp / f"{uid}.{uuid.uuid4().hex[:8]}.part"
        try:
            _write_durably(part, data)
            final = self.pending_path(uid)
            os.replace(part, final)  # atomic: pending/ never holds half a file
            _fsync_dir(self.pending)
        except BaseException:
            with contextlib.suppress(OSError):
                part.unlink()
            raise
        return final

    def write_results(self, uid: str, outputs: list[pydicom.Dataset], summary: dict) -> None:
        """Keep the built results of ``uid`` until it is delivered (durably, atomically as a folder)."""
        part = self.tmp / f"{uid}.{uuid.uuid4().hex[:8]}.results"
        part.mkdir(mode=0o700)
        for i, ds in enumerate(outputs):
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            _write_durably(part / f"{i}.dcm", buffer.getvalue())
        _write_durably(part / "summary.json", json.dumps(summary).encode())
        _fsync_dir(part)
        os.replace(part, self.results / uid)
        _fsync_dir(self.results)

    def read_results(self, uid: str) -> tuple[list[pydicom.Dataset], dict] | None:
        """The results :meth:`write_results` kept for ``uid``, or None."""
        folder = self.results / uid
        if not folder.is_dir():
            return None
        files = sorted(folder.glob("*.dcm"), key=lambda f: int(f.stem))
        return [pydicom.dcmread(f) for f in files], json.loads((folder / "summary.json").read_text())

    def is_done(self, uid: str) -> bool:
        return (self.done / uid).exists()

    def is_failed(self, uid: str) -> bool:
        return (self.failed / f"{uid}.dcm").exists()

    def mark_done(self, uid: str) -> None:
        """Record delivery, then drop the image: in that order, so a crash re-delivers."""
        _write_durably(self.done / uid, f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n".encode())
        _fsync_dir(self.done)
        with contextlib.suppress(FileNotFoundError):
            self.pending_path(uid).unlink()
        shutil.rmtree(self.results / uid, ignore_errors=True)

    def move_failed(self, uid: str, reason: str) -> Path:
        """Move the image to failed/ next to a reason file; returns the image's new path."""
        reason_file = self.failed / f"{uid}.reason.txt"
        _write_durably(reason_file, f"study {study_id(uid)}\n{reason}\n".encode())
        target = self.failed / f"{uid}.dcm"
        with contextlib.suppress(FileNotFoundError):
            os.replace(self.pending_path(uid), target)
        _fsync_dir(self.failed)
        shutil.rmtree(self.results / uid, ignore_errors=True)
        return target

    def recover(self) -> list[str]:
        """UIDs still pending (oldest first), after removing half-written files.

        A ``.part`` file was never acknowledged, so its sender still has the image and
        will send it again: deleting it loses nothing.
        """
        for part in self.tmp.glob("*.part"):
            with contextlib.suppress(OSError):
                part.unlink()
        for part in self.tmp.glob("*.results"):  # results half written: they are built again
            shutil.rmtree(part, ignore_errors=True)
        files = [p for p in self.pending.glob("*.dcm") if is_valid_uid(p.stem)]
        files.sort(key=lambda p: p.stat().st_mtime)
        return [p.stem for p in files]


class WorkQueue:
    """Bounded queue of SOPInstanceUIDs with per-item "not before" times.

    A UID is *in* the queue from :meth:`reserve` until :meth:`finish`, including while
    a worker holds it and while it waits for a retry; so ``len`` counts every study
    the bridge has accepted and not yet finished, which is what the bound protects
    (the spool must not grow without limit while the destination is down).  Retries
    wait in a heap, not in a sleeping worker, so one failing study does not hold up
    the others.
    """

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        self.maxsize = maxsize
        self._cond = threading.Condition()
        self._members: set[str] = set()  # reserved, queued, waiting or in flight
        self._heap: list[tuple[float, int, str]] = []  # (ready_at, seq, uid)
        self._seq = 0  # FIFO among equal ready times

    def __len__(self) -> int:
        with self._cond:
            return len(self._members)

    def __contains__(self, uid: object) -> bool:
        with self._cond:
            return uid in self._members

    def reserve(self, uid: str) -> QueueState:
        """Claim a slot for a new arrival: RESERVED, QUEUED (already in) or FULL."""
        with self._cond:
            if uid in self._members:
                return QueueState.QUEUED
            if len(self._members) >= self.maxsize:
                return QueueState.FULL
            self._members.add(uid)
            return QueueState.RESERVED

    def cancel(self, uid: str) -> None:
        """Give back a reserved slot that was never committed."""
        with self._cond:
            self._members.discard(uid)
            self._cond.notify_all()

    def put(self, uid: str, delay_s: float = 0.0) -> None:
        """Make ``uid`` ready after ``delay_s``: a commit of a reservation, a retry, or a
        study recovered from the spool at start-up (which may exceed ``maxsize``: it is
        already on disk, refusing it would protect nothing)."""
        with self._cond:
            self._members.add(uid)
            self._seq += 1
            heapq.heappush(self._heap, (time.monotonic() + max(0.0, delay_s), self._seq, uid))
            self._cond.notify_all()

    def get(self, timeout: float) -> str | None:
        """The next ready UID, or None if none is ready within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                now = time.monotonic()
                if self._heap and self._heap[0][0] <= now:
                    return heapq.heappop(self._heap)[2]
                wake = deadline if not self._heap else min(deadline, self._heap[0][0])
                if now >= deadline:
                    return None
                self._cond.wait(max(0.0, wake - now))

    def finish(self, uid: str) -> None:
        """``uid`` is delivered, failed or given up on: free its slot."""
        with self._cond:
            self._members.discard(uid)
            self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Block until nothing is queued, waiting or in flight; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._members:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True


class Worker:
    """Takes studies from the queue: detector, SR/GSPS, delivery; retries or fails them.

    Runs in one thread (``run``); ``_attempts`` is touched by it alone.  ``destination``
    stores results (:mod:`cxr.client.destinations`: C-STORE or STOW-RS).
    ``count(key)`` bumps the bridge's counters.  A study in flight when ``stop`` is set
    finishes its step; one taken after it stays in the spool for the next start.
    """

    def __init__(self, config: PacsConfig, client: Any, spool: Spool, queue: WorkQueue, destination: Any,
                 count: Callable[[str], None], stop: threading.Event) -> None:
        self.config, self.client, self.spool, self.queue = config, client, spool, queue
        self.destination, self.count, self.stop = destination, count, stop
        self._attempts: dict[str, int] = {}  # this pass's attempts per UID

    def run(self) -> None:
        """The thread's body: take ready studies until ``stop`` is set."""
        while not self.stop.is_set():
            uid = self.queue.get(timeout=_POLL_S)
            if uid is None:
                continue
            if self.stop.is_set():
                break  # leave it in the spool for the next start
            try:
                self._process(uid)
            except Exception as exc:  # noqa: BLE001 - the worker must outlive one bad study
                # Type only: an exception message may quote attribute values.
                log.error("study %s: unexpected %s; left in the spool for the next start", study_id(uid),
                          type(exc).__name__, exc_info=log.isEnabledFor(logging.DEBUG))
                self._forget(uid)
                self.queue.finish(uid)

    def _forget(self, uid: str) -> None:
        self._attempts.pop(uid, None)

    def _process(self, uid: str) -> None:
        sid, path = study_id(uid), self.spool.pending_path(uid)
        try:
            received_at = path.stat().st_mtime
            # Read and parsed once: the detector gets these very bytes, never re-encoded; the SR/GSPS this Dataset.
            study = Study(path.read_bytes(), path=path, keep_dataset=True)
            ds = study.dataset
        except FileNotFoundError:  # removed by an operator: nothing to do
            self._forget(uid)
            self.queue.finish(uid)
            return
        except (InvalidImageError, OSError) as exc:
            return self._fail(uid, f"spooled file unreadable: {type(exc).__name__}: {exc}",
                              f"spooled file unreadable ({type(exc).__name__})")
        attempt = self._attempts.get(uid, 0) + 1
        # Results are built once and kept in the spool until delivered: a retry, or a restart
        # after a crash, re-sends the same instances (same SOPInstanceUIDs), so a destination
        # that stored them before stores them once.
        built = self.spool.read_results(uid)
        if built is None:
            try:
                result = ask(self.client, study, self.config, sid)
            except DetectorError as err:
                if err.retryable or err.status in _TRANSIENT:
                    return self._retry(uid, attempt, f"detector {err.status}")
                # Server messages describe the input's format, never its patient.
                why = f"detector {err.status}: {err.message}"
                return self._fail(uid, why, why[:200])
            try:
                outputs = result_objects(ds, result, self.config)
            except Exception as exc:  # noqa: BLE001 - highdicom validation: the same input fails again
                return self._fail(uid, f"building the results: {type(exc).__name__}: {exc}",
                                  f"building the results failed ({type(exc).__name__})")
            built = outputs, {"findings": len(result.detections), "detector_ms": result.latency_ms}
            self.spool.write_results(uid, *built)
        outputs, summary = built
        try:
            self.destination.deliver(outputs)
        except DeliveryError as exc:
            if exc.permanent:
                return self._fail(uid, str(exc), str(exc))
            return self._retry(uid, attempt, str(exc))
        self.spool.mark_done(uid)
        self._forget(uid)
        self.queue.finish(uid)
        self.count("delivered")
        log.info("study %s delivered: %d findings, %s to %s, %.0f ms since received (detector %.0f ms)",
                 sid, summary["findings"], describe_outputs(outputs), self.destination,
                 max(0.0, time.time() - received_at) * 1000.0, summary["detector_ms"])

    def _retry(self, uid: str, attempt: int, why: str) -> None:
        self.count("retries")
        sid = study_id(uid)
        if attempt < self.config.max_attempts_per_pass:
            delay = self.config.retry_backoff_s * 2 ** (attempt - 1)
            self._attempts[uid] = attempt
            log.warning("study %s retrying in %.1f s (attempt %d of %d): %s", sid, delay, attempt,
                        self.config.max_attempts_per_pass, why)
        else:
            delay = self.config.pass_pause_s
            self._attempts.pop(uid, None)  # a fresh pass later (or at the next start)
            log.warning("study %s retrying in %.1f s: %d attempts failed (%s); kept in the spool", sid, delay,
                        attempt, why)
        self.queue.put(uid, delay)

    def _fail(self, uid: str, reason: str, logged: str) -> None:
        """Permanent failure: ``reason`` goes to the reason file, ``logged`` (PHI-free) to the log."""
        target = self.spool.move_failed(uid, reason)
        self._forget(uid)
        self.queue.finish(uid)
        self.count("failed")
        log.error("study %s failed: %s; moved to %s", study_id(uid), logged, target.parent)
