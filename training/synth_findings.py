"""Findings for the synthetic radiograph generator: where their boxes go, and how each
class looks inside its box.

Box statistics come from NIH's own ``BBox_List_2017.csv`` (984 boxes on 880 images; the
copy torchxrayvision ships), so box sizes and positions match the real data set.  Every
finding is drawn *inside* its box and fills most of it, so the box is a fair target for
a detector.  Boxes are ``xyxy`` float32 in pixels of the output image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from cxr.boxes import box_iou
from cxr.labels import NIH_BBOX_CLASSES
from cxr.training.synth_anatomy import Anatomy, in_lungs, lung_edges, sigmoid, smooth_noise

# Per class, from BBox_List_2017.csv (1024 x 1024 grid), split by side of the image
# because most classes are bimodal (left or right lung):
#   p_right: fraction of boxes whose centre x >= 512;
#   left / right: (mean, std) of (centre x, centre y, log width, log height).
# Computed once with numpy from torchxrayvision/data/BBox_List_2017.csv.gz.
BOX_STATS: dict[str, tuple[float, tuple, tuple]] = {
    "Atelectasis": (0.50, ((321.5, 567.9, 5.13, 4.75), (74.2, 117.6, 0.49, 0.49)), ((721.1, 596.3, 5.31, 4.86), (96.2, 116.9, 0.58, 0.52))),
    "Cardiomegaly": (0.95, ((478.4, 620.5, 6.22, 5.97), (22.2, 57.1, 0.14, 0.15)), ((594.8, 580.7, 6.16, 5.93), (42.7, 65.9, 0.11, 0.15))),
    "Effusion": (0.49, ((240.0, 541.5, 5.25, 5.66), (70.7, 119.5, 0.58, 0.74)), ((785.3, 609.4, 5.29, 5.41), (86.6, 114.0, 0.50, 0.68))),
    "Infiltration": (0.56, ((359.8, 535.8, 5.54, 5.54), (86.6, 134.6, 0.51, 0.52)), ((683.7, 539.4, 5.55, 5.63), (75.0, 103.3, 0.48, 0.42))),
    "Mass": (0.47, ((338.6, 478.3, 5.00, 5.13), (75.8, 113.4, 0.55, 0.64)), ((721.2, 442.9, 4.86, 4.97), (93.8, 120.7, 0.59, 0.54))),
    "Nodule": (0.52, ((288.3, 483.7, 4.25, 4.22), (89.4, 152.3, 0.28, 0.32)), ((770.2, 503.4, 4.22, 4.18), (74.4, 161.0, 0.33, 0.33))),
    "Pneumonia": (0.52, ((328.9, 566.6, 5.45, 5.57), (71.0, 106.4, 0.42, 0.51)), ((687.1, 571.1, 5.57, 5.66), (69.5, 106.7, 0.44, 0.40))),
    "Pneumothorax": (0.43, ((283.6, 349.3, 5.13, 5.28), (73.1, 185.4, 0.58, 0.83)), ((715.6, 309.8, 5.23, 5.23), (62.0, 196.0, 0.42, 0.58))),
}
# Boxes per class in the same file; sets how often each class is drawn.
CLASS_COUNTS: dict[str, int] = {
    "Atelectasis": 180, "Cardiomegaly": 146, "Effusion": 153, "Infiltration": 123,
    "Mass": 85, "Nodule": 79, "Pneumonia": 120, "Pneumothorax": 98,
}
# Boxes per image in the same file: 787 images with 1, 83 with 2, 10 with 3 or 4.
BOXES_PER_IMAGE_P: tuple[float, float, float] = (787 / 880, 83 / 880, 10 / 880)
_GRID = 1024.0  # the statistics' pixel grid (NIH images as released)

assert tuple(BOX_STATS) == NIH_BBOX_CLASSES == tuple(CLASS_COUNTS)


def _sample_box(rng: np.random.Generator, name: str, a: Anatomy) -> np.ndarray:
    """One xyxy box for class ``name`` in the 1024 grid, placed where the finding lives."""
    p_right, left, right = BOX_STATS[name]
    side = 1 if rng.random() < p_right else -1
    mean, std = right if side > 0 else left
    for _ in range(200):
        cx, cy, lw, lh = rng.normal(mean, std)
        # Keep sizes within 2 std of the real log-size distribution (no 5-pixel boxes).
        lw = float(np.clip(lw, mean[2] - 2 * std[2], mean[2] + 2 * std[2]))
        lh = float(np.clip(lh, mean[3] - 2 * std[3], mean[3] + 2 * std[3]))
        # Real boxes' sides are correlated; cap the aspect ratio (round lesions rounder).
        cap = math.log(1.5 if name in ("Nodule", "Mass") else 3.0)
        excess = max(0.0, abs(lw - lh) - cap) / 2
        lw, lh = (lw - excess, lh + excess) if lw > lh else (lw + excess, lh - excess)
        w, h = math.exp(lw), math.exp(lh)
        if name == "Cardiomegaly":
            w = max(w, 0.41 * _GRID)  # cardiothoracic ratio > 0.5, else it is not enlarged
            cx, cy = float(np.clip(cx, 470, 680)), float(np.clip(cy, 480, 680))
            break
        lat, _, dome = lung_edges(a, cy / _GRID, side)
        wall = (0.5 + side * lat) * _GRID  # the lateral chest wall at this height
        if name in ("Effusion", "Pneumothorax"):
            # Pleural findings hug the chest wall: the box's lateral edge sits on it.
            w = min(w, 0.30 * _GRID)
            cx = wall - side * (w / 2 - rng.normal(8, 6))
        if name == "Effusion":
            # Fluid collects at the base: the box ends at the costophrenic angle.
            y2 = (dome + a.cp_drop) * _GRID + rng.normal(12, 10)
            h = min(h, 0.45 * _GRID)
            cy = y2 - h / 2
            ok = in_lungs(cx / _GRID, (y2 - 0.3 * h) / _GRID, a, 0.01) or in_lungs((cx - side * w / 4) / _GRID, (y2 - 0.3 * h) / _GRID, a)
        elif name == "Pneumothorax":
            cy = max(cy, a.apex_v * _GRID + h / 2 - 10)  # from the apex down, not above it
            ok = in_lungs(cx / _GRID, cy / _GRID, a)
        else:
            ok = in_lungs(cx / _GRID, cy / _GRID, a, 0.02)
        if ok:
            break
    box = np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dtype=np.float64)
    # Keep boxes on the chest (the statistics' tails reach the image edge).
    lo = np.array([0.06, 0.06, 0.06, 0.06]) * _GRID
    hi = np.array([0.94, 0.90, 0.94, 0.90]) * _GRID
    box = np.clip(box, lo, hi)
    if box[2] - box[0] < 16 or box[3] - box[1] < 16:
        c = (box[:2] + box[2:]) / 2
        box = np.concatenate([c - 16, c + 16])
    return box


def sample_findings(
    rng: np.random.Generator, *, size: int = 1024, anatomy: Anatomy = Anatomy()
) -> list[tuple[str, np.ndarray]]:
    """Findings of one abnormal study: 1-3 ``(canonical NIH class, xyxy box)`` pairs,
    boxes float32 ``[4]`` in the ``size x size`` pixel grid, at most one Cardiomegaly."""
    names = list(CLASS_COUNTS)
    p = np.array(list(CLASS_COUNTS.values()), dtype=np.float64)
    n = int(rng.choice(3, p=BOXES_PER_IMAGE_P)) + 1
    out: list[tuple[str, np.ndarray]] = []
    for _ in range(n):
        for _ in range(10):
            name = names[int(rng.choice(len(names), p=p / p.sum()))]
            box = _sample_box(rng, name, anatomy) * (size / _GRID)
            same = [b for c, b in out if c == name]
            if name == "Cardiomegaly" and same:
                continue
            if same and box_iou(box, np.stack(same)).max() > 0.1:
                continue  # two boxes of one class should be two lesions, not one
            out.append((name, np.round(box, 2).astype(np.float32)))
            break
    return out


# --- rendering: each class writes into opacity / lucency / line layers ---------------


def _local(box_px, n: int):
    """Slices of the box on an ``n x n`` grid and local coords ``s, t`` (0..1 across it)."""
    x1, y1, x2, y2 = (float(c) for c in box_px)
    c0, c1 = max(0, int(math.floor(x1))), min(n, int(math.ceil(x2)))
    r0, r1 = max(0, int(math.floor(y1))), min(n, int(math.ceil(y2)))
    xs = (np.arange(c0, c1, dtype=np.float32) + 0.5 - x1) / max(x2 - x1, 1e-3)
    ys = (np.arange(r0, r1, dtype=np.float32) + 0.5 - y1) / max(y2 - y1, 1e-3)
    xs, ys = np.clip(xs, 0, 1), np.clip(ys, 0, 1)  # edge pixels whose centre falls outside
    return (slice(r0, r1), slice(c0, c1)), xs[None, :], ys[:, None], x2 - x1, y2 - y1


def _edge(x: np.ndarray, px: float) -> np.ndarray:
    """Soft step up over ``px`` pixels where ``x`` (already in pixels) crosses 0."""
    return sigmoid(x / max(px, 0.5) * 4)


@dataclass(frozen=True)
class FindingLayers:
    """What one finding added to the layers: its own values inside ``region``.

    ``region`` is ``(rows, cols)`` slices of the ``[n, n]`` grid; ``opacity``,
    ``lucency`` and ``lines`` are float32 ``[rows, cols]`` arrays (``None``: the finding
    adds nothing to that layer).  The true region of a finding
    (:mod:`cxr.training.synth_masks`) is computed from these, alone on the normal film.
    """

    region: tuple[slice, slice]
    opacity: np.ndarray | None = None
    lucency: np.ndarray | None = None
    lines: np.ndarray | None = None


def render_finding(
    name: str, box_px, rng: np.random.Generator, n: int,
    opacity: np.ndarray, lucency: np.ndarray, lines: np.ndarray,
) -> FindingLayers | None:
    """Draw one finding into the ``[n, n]`` layers, in place, inside ``box_px`` (xyxy on
    the ``n`` grid; the box's side of the image decides which way is lateral); returns
    what this finding alone added (``None`` when it drew nothing).

    ``opacity`` 0..1: fraction of lung air replaced (fluid, tissue); ``lucency`` 0..1:
    extra air without lung markings (pneumothorax); ``lines``: thin bright lines.
    Cardiomegaly draws nothing here: the heart shadow itself is enlarged to its box.
    """
    if name == "Cardiomegaly":
        return None
    sl, s, t, w, h = _local(box_px, n)
    if s.size == 0 or t.size == 0:
        return None
    rim = line = None
    side = -1 if (float(box_px[0]) + float(box_px[2])) / 2 < n / 2 else 1
    q = (1 - s) if side < 0 else s  # 1 at the lateral edge of the box, 0 medially
    px = n / 1024  # one pixel of the 1024 grid, in this grid
    r = np.hypot((s - 0.5) * 2, (t - 0.5) * 2)
    theta = np.arctan2(t - 0.5, s - 0.5)
    o = np.zeros((t.shape[0], s.shape[1]), dtype=np.float32)
    if name == "Nodule":
        rho = 0.93 + 0.05 * np.cos(2 * theta + rng.uniform(0, 6.3))
        inside = np.clip(1 - (r / rho) ** 2, 0, 1)
        o = rng.uniform(0.55, 0.8) * (0.35 + 0.65 * np.sqrt(inside)) * _edge((rho - r) * min(w, h) / 2, 2 * px)
    elif name == "Mass":
        rho = 0.84 + 0.09 * np.cos(3 * theta + rng.uniform(0, 6.3)) + 0.06 * np.cos(5 * theta + rng.uniform(0, 6.3))
        inside = np.clip(1 - (r / rho) ** 2, 0, 1)
        tex = 1 + 0.08 * smooth_noise(rng, *o.shape, 4)
        o = rng.uniform(0.65, 0.85) * (0.45 + 0.55 * np.sqrt(inside)) * tex * _edge((rho - r) * min(w, h) / 2, 3 * px)
    elif name == "Effusion":
        top = 0.04 + rng.uniform(0.45, 0.6) * (1 - q**2.5)  # meniscus: flat medially, climbing the lateral wall
        depth = (t - top) * h
        o = rng.uniform(0.75, 0.92) * _edge(depth, 14 * px) * (0.8 + 0.2 * np.clip((t - top) / 0.4, 0, 1))
        o = o * _edge(q * w, 10 * px)  # fades out medially instead of a vertical edge
    elif name == "Pneumothorax":
        a, b = rng.uniform(0.55, 0.75), rng.uniform(0.65, 0.85)
        e = np.hypot(q / a, (1 - t) / b)  # collapsed lung: ellipse from the medial-lower corner
        scale = min(a * w, b * h)
        rim = _edge((e - 1) * scale, 2 * px)  # the air between chest wall and lung
        lucency[sl] = np.maximum(lucency[sl], rim)
        line = 0.12 * np.exp(-(((e - 1) * scale / (1.6 * px)) ** 2))  # visceral pleural line
        lines[sl] += line
        o = 0.12 * _edge((1 - e) * scale, 6 * px)  # the collapsed lung is a little denser
    elif name == "Atelectasis":
        if h > 0.9 * w or rng.random() < 0.3:
            # Wedge: apex towards the hilum (medial), base on the lateral pleura.
            apex_t = rng.uniform(0.2, 0.5)
            half = 0.5 * q**0.8  # half-height of the wedge at this lateralness, in t units
            dist = (half - np.abs(t - (apex_t + (0.5 - apex_t) * q))) * h
            dist = dist + 0.06 * min(w, h) * smooth_noise(rng, *o.shape, 5)  # no ruler-straight sides
            o = rng.uniform(0.55, 0.75) * _edge(dist, 20 * px) * _edge(q * w - 4 * px, 14 * px)
            o = o * _edge((1 - q) * w - 3 * px, 8 * px)  # no hard edge where the box cuts the base
        else:
            # Plate-like: a thick, tapering line from one corner of the box to the other.
            thick = max(0.3, min(0.5, 30 * px / max(h, 1)))
            slope = rng.choice([-1.0, 1.0])
            centre = 0.5 + slope * (s - 0.5) * (1 - thick)
            taper = np.sqrt(np.clip(np.sin(math.pi * s), 0, 1))
            o = rng.uniform(0.6, 0.8) * _edge((thick / 2 * (0.4 + 0.6 * taper) - np.abs(t - centre)) * h, 4 * px)
    elif name in ("Infiltration", "Pneumonia"):
        dense = name == "Pneumonia"
        # Irregular outline: the radius is perturbed by a coarse random field.
        # Half density at r ~ 0.85: the soft edge has faded before the box edge cuts it.
        env = _edge((0.72 - r**2 + 0.2 * smooth_noise(rng, *o.shape, 3)) * min(w, h) / 2, (30 if dense else 45) * px)
        env = env * _edge((1 - r) * min(w, h), 6 * px)  # never outside the box
        tex = smooth_noise(rng, *o.shape, rng.uniform(3, 5) if dense else rng.uniform(5, 8))
        patch = sigmoid((tex + (1.0 if dense else 0.5)) * 2.5)
        fine = 1 + 0.12 * smooth_noise(rng, *o.shape, max(w, h) / (12 * px))  # mottled, not flat
        o = (rng.uniform(0.7, 0.9) if dense else rng.uniform(0.5, 0.65)) * env * patch * fine
        if dense:
            o = o * (1 - 0.55 * _bronchograms(rng, o.shape, side, px))
    o = np.clip(o, 0, 1)
    opacity[sl] = 1 - (1 - opacity[sl]) * (1 - o)
    return FindingLayers(sl, opacity=o, lucency=rim, lines=line)


def _bronchograms(rng: np.random.Generator, shape: tuple[int, int], side: int, px: float) -> np.ndarray:
    """Air bronchograms: a few dark branching tubes running laterally through a
    consolidation, ``[h, w]`` in 0..1."""
    h, w = shape
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    width = max(1, int(round(5 * px)))
    for _ in range(int(rng.integers(2, 4))):
        x, y = (0.0 if side > 0 else w - 1.0), rng.uniform(0.25, 0.75) * h
        ang = math.atan2(rng.normal(0, 0.5), side)
        for _ in range(4):
            step = rng.uniform(0.15, 0.25) * w
            x2, y2 = x + step * math.cos(ang), y + step * math.sin(ang)
            draw.line([(x, y), (x2, y2)], fill=255, width=width)
            x, y, ang = x2, y2, ang + rng.normal(0, 0.35)
    out = np.asarray(canvas, dtype=np.float32) / 255.0
    return np.asarray(Image.fromarray(out, "F").resize((max(1, w // 2), max(1, h // 2)), Image.BILINEAR).resize((w, h), Image.BILINEAR))
