"""cxr.client: the SDK PACS integrators install (``pip install cxr-triton[client]``, no torch).

::

    from cxr.client import DetectorClient, DetectorError
    with DetectorClient(url="127.0.0.1:8001") as client:
        result = client.predict("study.dcm")          # -> StudyResult
        for d in result.detections:
            print(d.label, d.score, d.box_xyxy_px)    # ORIGINAL image pixels
        explained = client.explain("study.dcm")       # -> ExplainedResult: a saliency map per detection

:class:`AsyncDetectorClient` is the asyncio twin.  Every failure is a
:class:`DetectorError` with ``status``, ``message`` and ``retryable``.

The names below are imported on first use, so light submodules
(``cxr.client.errors``, ``cxr.client.tls``) import without tritonclient.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "AsyncDetectorClient": "cxr.client.sdk",
    "Detection": "cxr.client.results",
    "DetectorClient": "cxr.client.sdk",
    "DetectorError": "cxr.client.errors",
    "ExplainedResult": "cxr.client.results",
    "Pixels": "cxr.client.requests",
    "Study": "cxr.client.study",
    "StudyResult": "cxr.client.results",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cxr.client' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
