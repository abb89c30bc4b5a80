"""The held-out studies every backend sees: the test split of ``--data``, or fresh synthetic ones.

Latency and parity use the same images, read into memory once (file I/O is not
what we measure).  Without ``--data`` a few studies are synthesised with a seed
no training run uses, so they are unseen by the model; all of them count as
held out.
"""

from __future__ import annotations

import io
import logging
import tempfile
from pathlib import Path

import numpy as np

from cxr.benchmarks.backends import BenchImage
from cxr.errors import InvalidFileError
from cxr.labels import annotation_labelset

log = logging.getLogger(__name__)

# cxr synth's default seed is 0 and tests use small ones: far away from both.
UNSEEN_SEED = 7919


def raw_pixels(data: bytes) -> tuple[np.ndarray, int] | None:
    """uint8/uint16 pixels and bits_stored of a grayscale PNG/JPEG, as a PACS host would hold them.

    Returns None for DICOM and colour images (the shm backend then skips them); the
    server scales uint8 by 255 and uint16 by 2**bits - 1, exactly as it decodes the
    file itself, so both served paths see the same numbers.
    """
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.mode == "L":
                return np.asarray(img, dtype=np.uint8).copy(), 8
            if img.mode.startswith("I;16") or img.mode == "I":
                return np.asarray(img).astype(np.uint16), 16
    except Exception:  # noqa: BLE001 - DICOM, or anything PIL cannot open
        return None
    return None


def _images_from_studies(studies, labelset) -> list[BenchImage]:
    from cxr.training.engine import ground_truth

    truths = ground_truth(studies, labelset)
    out = []
    for study, truth in zip(studies, truths):
        data = Path(study.path).read_bytes()
        px = raw_pixels(data)
        out.append(BenchImage(study.image_id, data, None if px is None else px[0], None if px is None else px[1], truth))
    return out


def load_images(ckpt, *, data: str | Path | None, n: int, split: str = "test") -> tuple[list[BenchImage], str]:
    """Up to ``n`` held-out studies and a description of where they came from."""
    from cxr.training.annotations import NIHDataset

    labelset = annotation_labelset(ckpt.labelset_name)
    if data is not None:
        ds = NIHDataset.from_dir(data, labelset=labelset, require_images=True)
        studies = ds.detection_studies(split)[:n]
        if not studies:
            raise InvalidFileError(f"{data}: split {split!r} has no images; pass a dataset with a {split} split or omit --data")
        return _images_from_studies(studies, ds.labelset), f"{len(studies)} {split}-split studies of {data}"

    from cxr.training.synth import SynthConfig, generate

    with tempfile.TemporaryDirectory(prefix="cxr-bench-") as tmp:
        out = Path(tmp) / "data"
        # Films at twice the model's input side, so preprocessing does real resizing work.
        size = max(128, 2 * ckpt.preprocess.size)
        generate(out, SynthConfig(images=n, seed=UNSEEN_SEED, size=size), progress=False)
        ds = NIHDataset.from_dir(out, labelset=labelset, require_images=True)
        studies = ds.detection_studies()[:n]  # unseen by the model: every split is held out
        images = _images_from_studies(studies, ds.labelset)
    return images, f"{len(images)} synthetic studies ({size} px, seed {UNSEEN_SEED}; no --data given)"
