"""One synthetic chest radiograph: anatomy, findings, the film curve and the grain.

:func:`render_study` draws the picture; :func:`render_study_with_masks` draws the same
picture (same random draws, same pixels) and also returns each finding's true region
(:mod:`cxr.training.synth_masks` says what that region is for each class).  Both work on
an ``n x n`` grid (``n = size``, or ``size // 2`` above 512 px, upsampled bicubically);
boxes and masks are in the ``size x size`` pixel grid of the output.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

from cxr.boxes import as_boxes
from cxr.labels import LabelSetName, get_labelset
from cxr.training.synth_anatomy import Anatomy, Pose, box_blur, heart_shadow, render_anatomy, sigmoid
from cxr.training.synth_findings import FindingLayers, render_finding
from cxr.training.synth_masks import finding_masks

# raw brightness on the n grid -> grey in [0, 1] on the size grid, before the grain
Develop = Callable[[np.ndarray], np.ndarray]


def render_study(
    rng: np.random.Generator,
    findings: list[tuple[str, np.ndarray]],
    *,
    size: int = 1024,
    anatomy_seed: int | None = None,
) -> np.ndarray:
    """Render one chest radiograph, float32 ``[size, size]`` in ``[0, 1]`` (bone bright).

    ``findings``: ``(NIH bbox class name, box)`` pairs, box ``[x1, y1, x2, y2]`` in pixels
    of the output, ``0 <= x1 < x2 <= size``.  Each finding is drawn inside its box; a
    Cardiomegaly box becomes the heart shadow's bounding box.  ``anatomy_seed`` fixes
    the body (same person across follow-ups); without it the body comes from ``rng``.
    """
    return _render(rng, findings, size=size, anatomy_seed=anatomy_seed, masks=False)[0]


def render_study_with_masks(
    rng: np.random.Generator,
    findings: list[tuple[str, np.ndarray]],
    *,
    size: int = 1024,
    anatomy_seed: int | None = None,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """:func:`render_study` plus each finding's true region: ``(image, masks)``.

    ``image`` is exactly what :func:`render_study` returns for the same arguments and
    ``rng`` state (the masks draw no random numbers); ``masks[i]`` is bool
    ``[size, size]`` in the image's pixel grid, the region of ``findings[i]`` (see
    :func:`cxr.training.synth_masks.finding_masks`), inside that finding's box.
    """
    return _render(rng, findings, size=size, anatomy_seed=anatomy_seed, masks=True)


def expose(tissue: np.ndarray, air: np.ndarray, vessels: np.ndarray,
           opacity: np.ndarray, lucency: np.ndarray, lines: np.ndarray) -> np.ndarray:
    """Raw brightness ``[n, n]`` of the anatomy with the findings' layers over it."""
    seen = 1 - opacity
    lungs = np.clip(air * 4, 0, 1)  # pleural lines only show against lung
    return tissue - 0.36 * air * seen * (1 + 0.6 * lucency) + vessels * (1 - lucency) * seen + lines * lungs


def _film(mid: float, gain: float, gamma: float, n: int, size: int) -> tuple[Develop, Callable[[np.ndarray], np.ndarray]]:
    """The study's film curve as ``(develop, upsample)``: ``develop`` takes raw
    brightness on the ``n`` grid to grey on the ``size`` grid; ``upsample`` is its last
    step alone (n grid -> size grid), for fields that are not brightness."""
    # Fixed normalisation (the curve's value at the extremes of a normal chest), not the
    # image's own min/max: a finding must not change the picture outside its box.
    lo, hi = sigmoid(np.float32((-0.05 - mid) * gain)), sigmoid(np.float32((0.9 - mid) * gain))

    def upsample(a: np.ndarray) -> np.ndarray:
        if n == size:
            return a
        return np.asarray(Image.fromarray(a.astype(np.float32), "F").resize((size, size), Image.BICUBIC))

    def develop(raw: np.ndarray) -> np.ndarray:
        if n == size:  # focal spot and screen blur (the bicubic upsampling blurs enough)
            raw = box_blur(raw, max(1, round(n / 512)), passes=2)
        img = sigmoid((raw - mid) * gain)
        img = np.clip((img - lo) / (hi - lo), 0, 1) ** np.float32(gamma)
        return upsample(img)

    return develop, upsample


def _render(
    rng: np.random.Generator, findings: list[tuple[str, np.ndarray]], *, size: int,
    anatomy_seed: int | None, masks: bool,
) -> tuple[np.ndarray, list[np.ndarray]]:
    labels = get_labelset(LabelSetName.NIH_BBOX)
    parsed = []
    for name, box in findings:
        b = as_boxes(box)
        if b.shape[0] != 1 or not (0 <= b[0, 0] < b[0, 2] <= size and 0 <= b[0, 1] < b[0, 3] <= size):
            raise ValueError(f"finding {name!r} needs one xyxy box inside {size}x{size}, got {box!r}")
        parsed.append((labels.canonical(name), b[0]))
    anatomy = Anatomy.sample(np.random.default_rng(anatomy_seed) if anatomy_seed is not None else rng)
    pose = Pose.sample(rng)
    # Film curve with per-study exposure and contrast (portable vs department), and the
    # noise, are drawn before the findings: a study without a finding is then the same
    # picture outside the finding's box.
    mid, gain, gamma = rng.uniform(0.33, 0.40), rng.uniform(3.5, 5.0), rng.uniform(0.85, 1.15)
    noise_level, noise_rng = rng.uniform(0.012, 0.025), np.random.default_rng(rng.integers(2**63))
    n = size if size <= 512 else size // 2  # render at half resolution, upsample: ~4x faster
    f = n / size
    hearts = [b * f for c, b in parsed if c == "Cardiomegaly"]
    if hearts:
        heart = hearts[0]
    else:  # the normal heart, carried through the study's pose
        x1, y1, x2, y2 = anatomy.heart
        pts = np.array([pose.to_image(x, y) for x in (x1, x2) for y in (y1, y2)]) * n
        heart = np.concatenate([pts.min(0), pts.max(0)])
    tissue, air, vessels = render_anatomy(anatomy, pose, n, heart, np.random.default_rng(rng.integers(2**63)))
    opacity, lucency, lines = (np.zeros((n, n), np.float32) for _ in range(3))
    drawn: list[FindingLayers | None] = [render_finding(name, box * f, rng, n, opacity, lucency, lines)
                                         for name, box in parsed]

    develop, upsample = _film(mid, gain, gamma, n, size)
    img = develop(expose(tissue, air, vessels, opacity, lucency, lines))
    grain = noise_rng.standard_normal((size, size), dtype=np.float32)
    img = img + np.float32(noise_level) * grain * np.sqrt(np.clip(img, 0.05, 1))
    img = np.clip(img, 0, 1).astype(np.float32)
    if not masks:
        return img, []
    film = lambda o, lu, li: develop(expose(tissue, air, vessels, o, lu, li))  # noqa: E731
    silhouette = upsample(heart_shadow(n, heart)) if hearts else None
    return img, finding_masks([(c, b) for c, b in parsed], drawn, film=film, heart=silhouette, n=n, size=size)
