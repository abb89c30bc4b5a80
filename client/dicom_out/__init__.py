"""A :class:`~cxr.client.results.StudyResult` as DICOM objects a PACS can store and display
next to the source image.

Two outputs per study, both in the source's study, each in a new series:

* :func:`structured_report` (``sr.py``) — Comprehensive 3D SR with a TID 1500 Measurement
  Report: one TID 1410 planar ROI group per detection (closed POLYLINE in source pixels,
  coded finding, confidence, tracking identifier, algorithm identification).  The machine-
  readable result; the US interoperability advisory recommends it over secondary capture.
* :func:`presentation_state` (``gsps.py``) — Grayscale Softcopy Presentation State: boxes
  and "Label 0.87" captions on a graphic layer, for viewers that do not render SR.

What every output shares lives beside them: ``findings.py`` (the coded concept of each
finding name, :func:`finding_code`) and ``source.py`` (the check that a result belongs to
its source image, the box outline in the source's pixel frame, tracking identifiers).

Coordinates: ``Detection.box_xyxy_px`` is in the ORIGINAL image's continuous pixel
frame (pixel ``i`` spans ``[i, i+1)``), which is exactly the frame of SR SCOORD and of
GSPS ``PIXEL`` units (top-left corner of the top-left pixel is ``0.0\\0.0``), so boxes
are written without any half-pixel shift.  Boxes are clipped to the image first.

The same detection gets the same tracking UID in the SR and in the GSPS (derived from
the source instance, the model and the detection's index), so a viewer can link a
drawn box to its SR measurement group.

No torch here: this package ships in the ``[client]`` extra.
"""

from __future__ import annotations

from cxr.client.dicom_out.findings import PRIVATE_SCHEME, finding_code
from cxr.client.dicom_out.gsps import presentation_state
from cxr.client.dicom_out.sr import structured_report

__all__ = ["PRIVATE_SCHEME", "finding_code", "presentation_state", "structured_report"]
