"""What the PACS bridge makes of one study: the detector's answer, and the DICOM objects built from it.

:func:`ask` calls ``predict`` -- or, when the bridge runs with ``saliency``, ``explain``: the same
detections, each with its D-RISE saliency map (an :class:`~cxr.client.results.ExplainedResult`,
logged here).  :func:`result_objects` gets that result and returns every object to deliver.
It is the seam for the saliency carriers: a Parametric Map or a Secondary Capture writer
(``client/dicom_out/``) adds its objects there when the result is an ExplainedResult; until
then the maps are requested and logged, and the SR/GSPS are what is delivered.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import pydicom

from cxr.client.dicom_out import presentation_state, structured_report
from cxr.client.results import ExplainedResult, StudyResult
from cxr.client.study import Study

if TYPE_CHECKING:  # pacs imports the queue, which imports this module
    from cxr.client.pacs import PacsConfig

log = logging.getLogger("cxr.pacs")


def ask(client: Any, study: Study, config: PacsConfig, sid: str) -> StudyResult:
    """The detector's answer for ``study`` (``sid``: its PHI-free log id); DetectorError as the SDK raises it."""
    if not config.saliency:
        return client.predict(study, timeout_s=config.timeout_s)
    result: ExplainedResult = client.explain(study, timeout_s=config.timeout_s)
    log.info("study %s explained: %d saliency maps (%s, %d masks, peaks %s) in %.0f ms", sid,
             len(result.detections), result.method, result.masks,
             ", ".join(f"{float(m.max()):.2f}" for m in result.saliency) or "-", result.latency_ms)
    return result


def result_objects(ds: pydicom.Dataset, result: StudyResult, config: PacsConfig) -> list[pydicom.Dataset]:
    """The objects to deliver for ``result``, each referencing ``ds`` (the study as received).

    An :class:`~cxr.client.results.ExplainedResult` carries the maps (``result.saliency``,
    ``result.saliency_map(i)`` on the film's grid): their DICOM writers belong here.
    """
    outputs = [structured_report(ds, result)]
    if config.gsps:
        outputs.append(presentation_state(ds, result))
    # An ExplainedResult's Parametric Map / Secondary Capture joins `outputs` here (client/dicom_out/).
    return outputs
