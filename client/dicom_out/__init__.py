"""A :class:`~cxr.client.results.StudyResult` as DICOM objects a PACS can store and display
next to the source image.

Two outputs per study, and two more per explained study, all in the source's study, each kind in a new series:

* :func:`structured_report` (``sr.py``) — Comprehensive 3D SR with a TID 1500 Measurement
  Report: one TID 1410 planar ROI group per detection (closed POLYLINE in source pixels,
  coded finding, confidence, tracking identifier, algorithm identification).  The machine-
  readable result; the US interoperability advisory recommends it over secondary capture.
* :func:`presentation_state` (``gsps.py``) — Grayscale Softcopy Presentation State: boxes
  and "Label 0.87" captions on a graphic layer, for viewers that do not render SR.

* :func:`parametric_maps` (``pmap.py``) — one Parametric Map per explained finding: its D-RISE
  saliency map on the film's grid, 16-bit with a Real World Value Mapping to ``[0, 1]``, in a
  Frame of Reference of its own that places it on the film (CR has none; see the module).
* :func:`secondary_captures` (``sc.py``) — one Secondary Capture per explained finding: the film
  with that map, box, label and colour bar burned in, marked as derived; what every viewer shows.
* :func:`segmentation` (``seg.py``) — a Mask R-CNN's masks (``cxr_segment``) as one BINARY DICOM
  Segmentation, one segment per finding class.

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
from cxr.client.dicom_out.pmap import parametric_maps
from cxr.client.dicom_out.sc import secondary_captures
from cxr.client.dicom_out.seg import segmentation
from cxr.client.dicom_out.sr import structured_report

MAX_MAPS = 9  # maps per study as DICOM, as in the overlay PNG: the highest-scoring findings

__all__ = ["MAX_MAPS", "PRIVATE_SCHEME", "finding_code", "parametric_maps", "presentation_state", "secondary_captures",
           "segmentation", "structured_report"]
