"""Dataset layer: annotation readers, patient-level splits, summaries, COCO export.

Pure Python + numpy (no torch): ``cxr data info`` runs on any box.  Every reader
returns :class:`Study` records whose boxes are float32 ``[N, 4]`` xyxy
(``[x1, y1, x2, y2]``) in the ORIGINAL pixel grid of the image the study points at.

- NIH ChestX-ray14: :func:`read_nih_data_entry`, :func:`read_nih_bbox_list`,
  :class:`NIHDataset` (``cxr.training.nih_csv``, ``cxr.training.nih``)
- VinDr-CXR: :func:`read_vindr` with reader fusion (``cxr.training.vindr``)
- instance masks: :class:`InstanceMasks` (``Study.masks``, ``cxr.training.masks``); the
  released mask formats in ``cxr.training.siim``, ``cxr.training.chexlocalize`` and
  ``cxr.training.chexmask``
- :func:`patient_split`, :func:`to_coco`, :func:`summarize`, :func:`format_summary`
"""

from __future__ import annotations

from cxr.training.coco import to_coco
from cxr.training.masks import InstanceMasks
from cxr.training.nih import NIH_RELEASED_SIZE, NIHDataset
from cxr.training.nih_csv import read_nih_bbox_list, read_nih_data_entry
from cxr.training.studies import SPLITS, Study, assign_patients, patient_split
from cxr.training.summary import format_summary, summarize
from cxr.training.vindr import fuse_readers, read_vindr

__all__ = [
    "InstanceMasks",
    "NIH_RELEASED_SIZE",
    "NIHDataset",
    "SPLITS",
    "Study",
    "assign_patients",
    "format_summary",
    "fuse_readers",
    "patient_split",
    "read_nih_bbox_list",
    "read_nih_data_entry",
    "read_vindr",
    "summarize",
    "to_coco",
]
