"""The true region of each synthetic finding: the pixels the film shows as abnormal.

Saliency maps are scored against these regions and Mask R-CNN learns them, so a region
is never the box: it is where the radiograph *differs from the same film without the
finding*, by at least :data:`MASK_THRESHOLD` grey levels (0..1 scale, before the grain),
with the finding drawn alone on the normal film.  Per class:

- **Nodule, Mass**: the lesion's disc (its lobulated outline), where it shows.
- **Effusion**: the fluid layer above the costophrenic angle up to its meniscus; the
  part of the box below the diaphragm shows nothing and is not in the region.
- **Pneumothorax**: the air rim between the chest wall and the collapsed lung: of the
  pixels the pneumothorax changes, those where its lucency alone shows (so not the
  slightly denser collapsed lung medial to the pleural line), which is what SIIM-ACR's
  annotators outline.
- **Atelectasis**: the wedge or the plate-like band.
- **Infiltration, Pneumonia** (diffuse): the opacity above the threshold inside its box,
  patchy edges and air bronchograms included as the film shows them.
- **Cardiomegaly**: the heart silhouette (its drawn shadow at half intensity), the whole
  enlarged heart as CheXlocalize's radiologists outline it, not only the part that grew
  beyond the normal heart.

Each region is cut to the pixels its box touches (the film blur spreads a finding 1-2
pixels past it), so a mask never leaves its NIH box; a finding that shows nowhere (e.g.
hidden behind the heart) gets an empty mask.  Findings overlapping in one study each
get their own region, computed alone, so instance masks may overlap.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from cxr.training.synth_findings import FindingLayers

# ~8 of 255 grey levels: about twice the grain's standard deviation over the lungs, so a
# region is what a reader could see, and the soft edges of diffuse findings end where
# they fade into the film.
MASK_THRESHOLD = 0.03

# (opacity, lucency, lines) on the n grid -> grey [size, size] of the developed film
Film = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def box_pixels(box, size: int) -> np.ndarray:
    """Bool ``[size, size]``: the pixels that box ``[x1, y1, x2, y2]`` (pixels of that
    grid) touches, partly covered edge pixels included."""
    x1, y1, x2, y2 = (float(v) for v in box)
    out = np.zeros((size, size), dtype=bool)
    r0, r1 = max(0, math.floor(y1)), min(size, math.ceil(y2))
    c0, c1 = max(0, math.floor(x1)), min(size, math.ceil(x2))
    out[r0:r1, c0:c1] = True
    return out


def finding_masks(
    findings: list[tuple[str, np.ndarray]],
    drawn: list[FindingLayers | None],
    *,
    film: Film,
    heart: np.ndarray | None,
    n: int,
    size: int,
    threshold: float = MASK_THRESHOLD,
) -> list[np.ndarray]:
    """One bool ``[size, size]`` mask per finding, in the order of ``findings``.

    ``findings``: ``(canonical class, xyxy box in the size grid)``; ``drawn[i]``: what
    :func:`~cxr.training.synth_findings.render_finding` returned for ``findings[i]`` on
    the ``n`` grid; ``film``: the study's own exposure and film curve applied to layers
    on the ``n`` grid; ``heart``: the drawn heart shadow on the size grid (0..1), needed
    when a Cardiomegaly is among the findings.  The module docstring defines the regions.
    """
    zeros = np.zeros((n, n), dtype=np.float32)
    normal = film(zeros, zeros, zeros)
    out = []
    for (name, box), layers in zip(findings, drawn, strict=True):
        if name == "Cardiomegaly":
            if heart is None:
                raise ValueError("a Cardiomegaly finding needs the heart shadow it enlarged (heart=None)")
            region = heart >= 0.5
        elif layers is None:  # a box with no pixel on the grid: nothing was drawn
            region = np.zeros((size, size), dtype=bool)
        else:
            own = [zeros.copy(), zeros.copy(), zeros.copy()]
            for layer, values in zip(own, (layers.opacity, layers.lucency, layers.lines)):
                if values is not None:
                    layer[layers.region] = values
            region = np.abs(film(*own) - normal) >= threshold
            if name == "Pneumothorax":  # of what differs, the air rim: where the lucency alone shows
                region &= np.abs(film(zeros, own[1], zeros) - normal) >= threshold
        out.append(region & box_pixels(box, size))
    return out
