"""cxr.client: the SDK PACS integrators install (``pip install cxr-triton[client]``, no torch).

::

    from cxr.client import DetectorClient, DetectorError
    with DetectorClient(url="127.0.0.1:8001") as client:
        result = client.predict("study.dcm")          # -> StudyResult
        for d in result.detections:
            print(d.label, d.score, d.box_xyxy_px)    # ORIGINAL image pixels

:class:`AsyncDetectorClient` is the asyncio twin.  Every failure is a
:class:`DetectorError` with ``status``, ``message`` and ``retryable``.
"""

from cxr.client.errors import DetectorError
from cxr.client.requests import Pixels
from cxr.client.results import Detection, StudyResult
from cxr.client.sdk import AsyncDetectorClient, DetectorClient

__all__ = ["AsyncDetectorClient", "Detection", "DetectorClient", "DetectorError", "Pixels", "StudyResult"]
