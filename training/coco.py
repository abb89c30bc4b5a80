"""Studies as a COCO detection ground truth, for pycocotools / faster-coco-eval.

COCO boxes are ``[x, y, w, h]`` in the same ORIGINAL pixel grid as the studies'
xyxy boxes; category ids are the model class ids of the :class:`LabelSet`
(``1..K``, 0 stays background), so detections can be scored without a lookup table.
A box with an instance mask (``Study.masks``) also carries its ``segmentation`` (COCO
compressed RLE, same grid), so the same dict is the ground truth of COCO segm AP.
"""

from __future__ import annotations

from collections.abc import Iterable

from cxr.boxes import box_area, xyxy_to_xywh
from cxr.labels import LabelSet, get_labelset
from cxr.training.masks import rle_area
from cxr.training.studies import Study


def to_coco(studies: Iterable[Study], labelset: LabelSet | str) -> dict:
    """A COCO detection dict: ``images``, ``annotations``, ``categories`` (and ``info``).

    Image ids are ``1..N`` in input order; each image also carries ``study_id``
    (``Study.image_id``) to map results back.  Studies without boxes stay in
    ``images`` (they count as negatives in COCOeval).  Pass only the studies that
    should be scored, e.g. ``NIHDataset.detection_studies("test")``: an image with
    findings but no boxes would turn correct detections into false positives.
    A box label outside ``labelset`` raises :class:`~cxr.errors.UnknownLabelError`.
    An annotation with a mask has ``segmentation`` and, as COCO defines it, ``area`` =
    the mask's pixel count (else the box's area).
    """
    labels = labelset if isinstance(labelset, LabelSet) else get_labelset(labelset)
    images, annotations = [], []
    for image_id, study in enumerate(studies, start=1):
        images.append({
            "id": image_id,
            "file_name": study.path.name if study.path is not None else study.image_id,
            "width": study.width,
            "height": study.height,
            "study_id": study.image_id,
        })
        xywh = xyxy_to_xywh(study.boxes)
        areas = box_area(study.boxes)
        rles = study.masks.rles if study.masks is not None else (None,) * len(study.boxes)
        for box, area, name, rle in zip(xywh, areas, study.box_labels, rles):
            ann = {
                "id": len(annotations) + 1,  # COCOeval treats id 0 as "unmatched"
                "image_id": image_id,
                "category_id": labels.class_id(name),
                "bbox": [float(v) for v in box],
                "area": float(area),
                "iscrowd": 0,
            }
            if rle is not None:
                ann["segmentation"] = dict(rle)
                ann["area"] = float(rle_area(rle, where=f"{study.image_id} {name}"))
            annotations.append(ann)
    categories = [
        {"id": labels.class_id(name), "name": name, "supercategory": "finding"} for name in labels.names
    ]
    return {
        "info": {"description": f"cxr ground truth, label set {labels.name}"},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
