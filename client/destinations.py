"""Where the PACS bridge (and ``cxr predict --stow``) store results: DICOM C-STORE or DICOMweb STOW-RS.

Both destinations take the finished SR/GSPS datasets and either store all of them or
raise :class:`DeliveryError`.  Its ``permanent`` flag decides what the bridge does:
a transient failure (peer down, out of resources, network) keeps the study in the
spool and is retried; a permanent one (the destination accepts none of the transfer
syntaxes or SOP classes offered, or refuses the data itself) moves the study to
``spool/failed/`` with the reason, because sending it again would fail the same way.

STOW-RS authentication (:func:`read_auth`) comes from a file or an environment
variable, never from the command line, where every user of the host could read it in
the process list: one line ``basic USER:PASSWORD`` or ``bearer TOKEN``.
"""

from __future__ import annotations

import base64
import logging
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from cxr.errors import InvalidFileError, InvalidOptionError, MissingFileError

__all__ = ["AUTH_ENV", "RESULT_SYNTAXES", "CStoreDestination", "DeliveryError", "StowDestination", "read_auth"]

log = logging.getLogger("cxr.pacs")

AUTH_ENV = "CXR_DICOMWEB_AUTH"  # "basic USER:PASSWORD" or "bearer TOKEN"
# Results are written Explicit VR Little Endian; pynetdicom converts to Implicit when only that is accepted.
RESULT_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
# C-STORE statuses meaning "stored" (PS3.4 B.2.3): success, and warnings for coercion.
_STORED = {0x0000, 0xB000, 0xB006, 0xB007}


class DeliveryError(Exception):
    """Results were not stored.  ``permanent``: sending again would fail the same way."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


def _status_is_transient(code: int) -> bool:
    # A7xx: out of resources; 0110 processing failure; 0212/0213 (mistyped/unrecognised
    # operation) and the Cxxx/A9xx errors say the data itself is refused.
    return (code & 0xFF00) == 0xA700 or code in (0x0110, 0x0210, 0x0211)


class CStoreDestination:
    """C-STORE to ``forward`` = (host, port, AE title) on one association per study."""

    def __init__(self, scu: Any, forward: tuple[str, int, str]) -> None:
        self.scu, self.forward = scu, forward  # scu: a pynetdicom AE requesting RESULT_SYNTAXES per SOP class

    def __str__(self) -> str:
        host, port, ae = self.forward
        return f"{ae}@{host}:{port}"

    @staticmethod
    def _refused(classes) -> str:
        names = sorted({pydicom.uid.UID(getattr(c, "abstract_syntax", c)).name for c in classes})
        return f"{', '.join(names)} ({', '.join(pydicom.uid.UID(ts).name for ts in RESULT_SYNTAXES)})"

    def deliver(self, outputs: Sequence[pydicom.Dataset]) -> None:
        host, port, ae = self.forward
        assoc = self.scu.associate(host, port, ae_title=ae)
        if not assoc.is_established:
            if assoc.rejected_contexts and not assoc.accepted_contexts:  # pynetdicom then aborts: nothing to send on
                raise DeliveryError(f"destination {self} accepts none of the transfer syntaxes offered for "
                                    f"{self._refused(assoc.rejected_contexts)}", permanent=True)
            raise DeliveryError(f"destination {self} {'rejected the association' if assoc.is_rejected else 'unreachable'}")
        try:
            accepted = {cx.abstract_syntax for cx in assoc.accepted_contexts}
            for obj in outputs:
                if obj.SOPClassUID not in accepted:  # e.g. a PACS without GSPS storage, or an odd syntax list
                    raise DeliveryError(f"destination {self} accepts none of the transfer syntaxes offered for "
                                        f"{self._refused([obj.SOPClassUID])}", permanent=True)
                status = assoc.send_c_store(obj)
                code = getattr(status, "Status", None)  # an empty Dataset: the peer went silent
                if code not in _STORED:
                    what = "no response" if code is None else f"status 0x{code:04X}"
                    comment = getattr(status, "ErrorComment", "") if code is not None else ""
                    raise DeliveryError(f"destination {self} did not store the result ({what}{': ' + comment if comment else ''})",
                                        permanent=code is not None and not _status_is_transient(code))
        finally:
            if assoc.is_established:
                assoc.release()


def read_auth(path: str | os.PathLike | None = None, *, environ=os.environ) -> dict[str, str]:
    """The Authorization header for STOW-RS from ``path`` or ``$CXR_DICOMWEB_AUTH`` ({} = none).

    The value is ``basic USER:PASSWORD`` or ``bearer TOKEN``.  A file readable by other
    users is refused: it holds a secret.
    """
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise MissingFileError(f"--dicomweb-auth: no such file: {p}")
        if p.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise InvalidFileError(f"--dicomweb-auth: {p} is readable by other users; chmod 600 it (it holds a secret)")
        text, where = p.read_text().strip(), str(p)
    elif environ.get(AUTH_ENV):
        text, where = environ[AUTH_ENV].strip(), f"${AUTH_ENV}"
    else:
        return {}
    scheme, _, secret = text.partition(" ")
    scheme, secret = scheme.lower(), secret.strip()
    if scheme == "basic" and ":" in secret:
        return {"Authorization": "Basic " + base64.b64encode(secret.encode()).decode("ascii")}
    if scheme == "bearer" and secret:
        return {"Authorization": f"Bearer {secret}"}
    raise InvalidOptionError(f"{where}: expected one line 'basic USER:PASSWORD' or 'bearer TOKEN' "
                             f"(got a value starting with {scheme[:10]!r})")


class StowDestination:
    """STOW-RS to a DICOMweb service root, e.g. ``http://pacs:8042/dicom-web``."""

    def __init__(self, url: str, *, headers: dict[str, str] | None = None, timeout_s: float = 60.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise InvalidOptionError(f"DICOMweb URL must start with http:// or https://, got {url!r}")
        from dicomweb_client import DICOMwebClient

        self.url = url.rstrip("/")
        self.client = DICOMwebClient(self.url, headers=dict(headers or {}), timeout=timeout_s)
        self.client.set_http_retry_params(retry=False)  # the bridge's spool retries, across restarts too
        if headers:  # dicomweb_client logs request headers at DEBUG: never the Authorization one
            logging.getLogger("dicomweb_client").setLevel(max(logging.INFO, logging.getLogger("dicomweb_client").level))

    def __str__(self) -> str:
        return self.url

    def deliver(self, outputs: Sequence[pydicom.Dataset]) -> None:
        import requests

        try:
            response = self.client.store_instances(list(outputs))
        except requests.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else None
            # 4xx but auth/time-outs/limits: the request itself is refused and would be again.
            permanent = code is not None and 400 <= code < 500 and code not in (401, 403, 408, 429)
            raise DeliveryError(f"STOW-RS to {self} failed: HTTP {code}", permanent=permanent) from exc
        except requests.RequestException as exc:
            raise DeliveryError(f"STOW-RS to {self} failed: {type(exc).__name__}") from exc
        failed = response.get("FailedSOPSequence") or []
        if failed:
            reasons = [int(item.get("FailureReason", 0x0110)) for item in failed]
            text = ", ".join(f"0x{r:04X}" for r in reasons)
            raise DeliveryError(f"STOW-RS to {self}: {len(failed)} of {len(outputs)} results refused ({text})",
                                permanent=not all(_status_is_transient(r) for r in reasons))
