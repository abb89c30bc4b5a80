"""What the PACS bridge makes of one study: the detector's answer, and the DICOM objects built from it.

:func:`ask` calls ``predict`` -- or, when the bridge runs with ``saliency``, ``explain``: the same
detections, each with its D-RISE saliency map (an :class:`~cxr.client.results.ExplainedResult`,
logged here).  :func:`result_objects` gets that result and returns every object to deliver.
An explained result also leaves as one Parametric Map and one Secondary Capture per finding
(the nine highest-scoring; ``client/dicom_out/pmap.py``, ``sc.py``), next to the SR (and GSPS).
With ``seg`` the bridge's client asks ``cxr_segment`` (a Mask R-CNN): each detection carries its
mask and a study with findings also leaves as one DICOM Segmentation (``client/dicom_out/seg.py``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import pydicom
from pydicom.uid import (Comprehensive3DSRStorage, GrayscaleSoftcopyPresentationStateStorage, ParametricMapStorage,
                         SecondaryCaptureImageStorage, SegmentationStorage)

from cxr.client.dicom_out import (MAX_MAPS, parametric_maps, presentation_state, secondary_captures, segmentation,
                                  structured_report)
from cxr.client.results import ExplainedResult, StudyResult
from cxr.client.study import Study

if TYPE_CHECKING:  # pacs imports the queue, which imports this module
    from cxr.client.pacs import PacsConfig

log = logging.getLogger("cxr.pacs")


def ask(client: Any, study: Study, config: PacsConfig, sid: str) -> StudyResult:
    """The detector's answer for ``study`` (``sid``: its PHI-free log id); DetectorError as the SDK raises it."""
    if not config.saliency:
        result = client.predict(study, timeout_s=config.timeout_s)
        if config.seg:
            log.info("study %s segmented: %d masks (%s px) in %.0f ms", sid, len(result.detections),
                     ", ".join(str(d.mask.area if d.mask else 0) for d in result.detections) or "-", result.latency_ms)
        return result
    result: ExplainedResult = client.explain(study, timeout_s=config.timeout_s)
    log.info("study %s explained: %d saliency maps (%s, %d masks, peaks %s) in %.0f ms", sid,
             len(result.detections), result.method, result.masks,
             ", ".join(f"{float(m.max()):.2f}" for m in result.saliency) or "-", result.latency_ms)
    return result


def result_classes(config: PacsConfig) -> tuple[str, ...]:
    """The SOP classes :func:`result_objects` can deliver under ``config``: the storage contexts the
    bridge asks its C-STORE destination for."""
    classes = [Comprehensive3DSRStorage]
    if config.gsps:
        classes.append(GrayscaleSoftcopyPresentationStateStorage)
    if config.saliency:
        classes += [ParametricMapStorage, SecondaryCaptureImageStorage]
    if config.seg:
        classes.append(SegmentationStorage)
    return tuple(classes)


def result_objects(ds: pydicom.Dataset, result: StudyResult, config: PacsConfig) -> list[pydicom.Dataset]:
    """The objects to deliver for ``result``, each referencing ``ds`` (the study as received).

    An :class:`~cxr.client.results.ExplainedResult` adds a Parametric Map and a Secondary Capture
    per finding the SR lists (at most :data:`~cxr.client.dicom_out.MAX_MAPS`, the highest-scoring);
    with ``config.seg`` a result with detections adds their masks as one Segmentation.
    """
    outputs = [structured_report(ds, result)]
    if config.gsps:
        outputs.append(presentation_state(ds, result))
    if isinstance(result, ExplainedResult):
        outputs += parametric_maps(ds, result, max_maps=MAX_MAPS)
        outputs += secondary_captures(ds, result, max_images=MAX_MAPS)
    if config.seg and result.detections:  # a Segmentation needs a segment: none for a film without findings
        outputs.append(segmentation(ds, result))
    return outputs


def describe_outputs(outputs: list[pydicom.Dataset]) -> str:
    """What is delivered, for the log: "SR+GSPS", "SR+2 PM+2 SC" (Parametric Maps, Secondary Captures), "SR+SEG"."""
    names = {Comprehensive3DSRStorage: "SR", GrayscaleSoftcopyPresentationStateStorage: "GSPS",
             ParametricMapStorage: "PM", SecondaryCaptureImageStorage: "SC", SegmentationStorage: "SEG"}
    counts: dict[str, int] = {}
    for ds in outputs:
        name = names.get(ds.SOPClassUID, "other")
        counts[name] = counts.get(name, 0) + 1
    return "+".join(name if n == 1 else f"{n} {name}" for name, n in counts.items())
