"""Normal chest anatomy for the synthetic radiograph generator (:mod:`cxr.training.synth`).

The anatomy lives in a *canonical* frame ``(u, v)``: ``u`` runs 0..1 left to right
across the image, ``v`` 0..1 top to bottom, patient facing the viewer as on a PA film
(so the patient's LEFT, the heart's apex and the gastric bubble, is on the IMAGE RIGHT).
A per-study :class:`Pose` (small rotation, scale, shift) maps it to the pixel grid.

Everything here returns "brightness" layers in arbitrary units (bone bright, air dark)
that :func:`cxr.training.synth.render_study` composes and passes through a film curve.
Only numpy and PIL: scipy is not a dependency of cxr.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

# --- small array helpers -------------------------------------------------------------


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 + 0.5 * np.tanh(0.5 * x)


def box_blur(a: np.ndarray, radius: int, passes: int = 2) -> np.ndarray:
    """Separable box blur of a float32 ``[H, W]`` array; 2 passes approximate a Gaussian
    with sigma ~ 0.8 * radius.  (PIL's filters refuse float images.)"""
    if radius < 1:
        return a
    k = 2 * radius + 1
    a = a.astype(np.float32, copy=False)
    for _ in range(passes):
        for axis in (0, 1):
            pad = [(0, 0), (0, 0)]
            pad[axis] = (radius + 1, radius)
            c = np.cumsum(np.pad(a, pad, mode="edge"), axis=axis, dtype=np.float32)
            n = a.shape[axis]
            hi = c[k : k + n] if axis == 0 else c[:, k : k + n]
            lo = c[:n] if axis == 0 else c[:, :n]
            a = (hi - lo) / np.float32(k)
    return a


def smooth_noise(rng: np.random.Generator, h: int, w: int, cells: float) -> np.ndarray:
    """A smooth random field ``[h, w]`` float32, about zero mean and unit std, whose
    blobs are about ``max(h, w) / cells`` pixels across (bicubic-upsampled white noise)."""
    ch = max(2, int(round(cells * h / max(h, w))))
    cw = max(2, int(round(cells * w / max(h, w))))
    small = rng.standard_normal((ch + 2, cw + 2)).astype(np.float32)
    field = Image.fromarray(small, "F").resize((w, h), Image.BICUBIC, box=(1, 1, cw + 1, ch + 1))
    out = np.asarray(field, dtype=np.float32)
    return (out - out.mean()) / (out.std() + 1e-6)


def rotated_ellipse(xx: np.ndarray, yy: np.ndarray, box, angle_deg: float, edge_px: float) -> np.ndarray:
    """Soft mask of the ellipse rotated by ``angle_deg`` whose bounding box is exactly
    ``box`` (xyxy, same pixel frame as ``xx``/``yy``); the edge is ``edge_px`` wide."""
    x1, y1, x2, y2 = box
    cx, cy, bx, by = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
    c2, s2 = math.cos(math.radians(angle_deg)) ** 2, math.sin(math.radians(angle_deg)) ** 2
    # Semi-axes a, b whose rotated ellipse has half-extents (bx, by); needs |angle| < 45.
    a2 = max((bx * bx * c2 - by * by * s2) / (c2 - s2), 1.0)
    b2 = max((by * by * c2 - bx * bx * s2) / (c2 - s2), 1.0)
    t = math.radians(angle_deg)
    dx, dy = xx - cx, yy - cy
    p = dx * math.cos(t) + dy * math.sin(t)
    q = -dx * math.sin(t) + dy * math.cos(t)
    r = np.sqrt(p * p / a2 + q * q / b2)
    return sigmoid((1.0 - r) * math.sqrt(min(a2, b2)) / max(edge_px, 0.3) * 2.0)


# --- patient and study parameters ---------------------------------------------------


@dataclass(frozen=True)
class Anatomy:
    """One patient's body shape in canonical units (fractions of the image side).

    Defaults are an average adult; :meth:`sample` jitters them per patient so that
    follow-up studies of one patient share a body (which is why splits go by patient).
    ``d`` below means lateral distance from the midline ``u = 0.5``.
    """

    thorax: float = 0.37  # d of the lateral lung edge at the costophrenic angles
    apex_v: float = 0.12  # v of the lung apices
    apex_d: float = 0.19  # d of the apex tip
    medial_d: float = 0.035  # d of the lungs' medial edge (hidden behind mediastinum)
    dome_v: float = 0.62  # v of the right hemidiaphragm dome (image left)
    dome_left_extra: float = 0.025  # the left dome sits lower (liver pushes the right up)
    cp_drop: float = 0.10  # costophrenic angles sit this far below the dome
    med_half: float = 0.055  # half-width of the upper mediastinum
    heart: tuple[float, float, float, float] = (0.39, 0.43, 0.69, 0.68)  # normal heart xyxy
    body_half: float = 0.45  # half-width of the body at the chest
    rib_v0: float = 0.085  # v where the first posterior rib leaves the spine
    rib_sp: float = 0.052  # posterior rib spacing
    female: bool = False
    gastric_bubble: bool = True
    vessel_seed: int = 0

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Anatomy:
        u = rng.uniform
        thorax = u(0.34, 0.40)
        dome = u(0.59, 0.66)
        hw, hh = u(0.135, 0.16), u(0.115, 0.135)  # normal heart: CTR about 0.38-0.45
        hcx = 0.5 + u(0.03, 0.05)
        hy2 = dome + u(0.045, 0.075)
        return cls(
            thorax=thorax,
            apex_v=u(0.10, 0.14),
            apex_d=u(0.17, 0.21),
            dome_v=dome,
            dome_left_extra=u(0.01, 0.04),
            cp_drop=u(0.08, 0.12),
            med_half=u(0.048, 0.062),
            heart=(hcx - hw, hy2 - 2 * hh, hcx + hw, hy2),
            body_half=thorax + u(0.05, 0.10),  # chest wall soft tissue outside the ribs
            rib_v0=u(0.075, 0.095),
            rib_sp=u(0.049, 0.056),
            female=bool(rng.random() < 0.44),  # NIH: 44% female
            gastric_bubble=bool(rng.random() < 0.7),
            vessel_seed=int(rng.integers(2**31)),
        )


@dataclass(frozen=True)
class Pose:
    """Per-study positioning: canonical (u, v) -> image fraction ``c + s R (p - c) + t``."""

    angle_deg: float = 0.0
    scale: float = 1.0
    shift: tuple[float, float] = (0.0, 0.0)
    inspiration: float = 0.0  # + lowers the diaphragm (deeper breath)

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Pose:
        return cls(
            angle_deg=float(np.clip(rng.normal(0, 1.5), -4, 4)),
            scale=float(rng.uniform(0.95, 1.05)),
            shift=(float(np.clip(rng.normal(0, 0.012), -0.03, 0.03)), float(np.clip(rng.normal(0, 0.012), -0.03, 0.03))),
            inspiration=float(rng.uniform(-0.02, 0.02)),
        )

    def to_image(self, u: float, v: float) -> tuple[float, float]:
        """Canonical point -> image fraction."""
        t = math.radians(self.angle_deg)
        du, dv = u - 0.5, v - 0.5
        return (
            0.5 + self.scale * (math.cos(t) * du - math.sin(t) * dv) + self.shift[0],
            0.5 + self.scale * (math.sin(t) * du + math.cos(t) * dv) + self.shift[1],
        )

    def canonical_grid(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Canonical ``(u, v)`` of every pixel centre of an ``n x n`` image, each ``[n, n]``."""
        x = (np.arange(n, dtype=np.float32) + 0.5) / n - 0.5
        xx, yy = x[None, :] - self.shift[0], x[:, None] - self.shift[1]
        t = math.radians(-self.angle_deg)
        c, s = np.float32(math.cos(t) / self.scale), np.float32(math.sin(t) / self.scale)
        return 0.5 + c * xx - s * yy, 0.5 + s * xx + c * yy


# --- geometry shared by rendering and by box sampling --------------------------------


def lung_edges(a: Anatomy, v, side: int, inspiration: float = 0.0):
    """Lateral edge, medial edge (as ``d``) and the diaphragm helper for one lung.

    ``side`` is -1 for the image-left lung (patient's right), +1 for the image-right."""
    t_lat = np.clip((v - a.apex_v) / 0.30, 0.0, 1.0)
    t_med = np.clip((v - a.apex_v) / 0.12, 0.0, 1.0)
    lat = a.apex_d + (a.thorax - a.apex_d) * np.sqrt(t_lat)
    med = a.apex_d - (a.apex_d - a.medial_d) * np.sqrt(t_med)
    dome = a.dome_v + inspiration + (a.dome_left_extra if side > 0 else 0.0)
    return lat, med, dome


def diaphragm_v(a: Anatomy, d, dome: float):
    """v of the diaphragm at lateral distance ``d``: a dome peaking mid-lung, falling
    steeply into the costophrenic angle laterally and gently to the heart medially."""
    peak_d = 0.45 * a.thorax
    lateral = a.cp_drop * ((d - peak_d) / (a.thorax - peak_d)) ** 2
    medial = 0.45 * a.cp_drop * ((peak_d - d) / (peak_d - a.medial_d)) ** 2
    return dome + np.where(d > peak_d, lateral, medial)


def lung_mask(a: Anatomy, u, v, side: int, *, inspiration: float = 0.0, edge: float = 0.003):
    """Soft mask (0..1) of one lung field at canonical points ``u, v``; ``edge`` is the
    edge width in canonical units (use ~1.5 pixels)."""
    d = side * (u - 0.5)
    lat, med, dome = lung_edges(a, v, side, inspiration)
    dia = diaphragm_v(a, d, dome)
    m = sigmoid((lat - d) / edge) * sigmoid((d - med) / edge)
    return m * sigmoid((dia - v) / edge) * sigmoid((v - a.apex_v) / edge)


def in_lungs(u: float, v: float, a: Anatomy = Anatomy(), margin: float = 0.0) -> bool:
    """Whether canonical point ``(u, v)`` lies inside a lung field of anatomy ``a`` at
    least ``margin`` from its edge (used to place findings where lungs are)."""
    side = -1 if u < 0.5 else 1
    d = side * (u - 0.5)
    lat, med, dome = lung_edges(a, v, side)
    if not (max(med, a.med_half) + margin < d < lat - margin and a.apex_v + margin < v < diaphragm_v(a, d, dome) - margin):
        return False
    # Not behind the heart either: a lesion there would be invisible on a PA film.
    x1, y1, x2, y2 = a.heart
    return bool(np.hypot((u - (x1 + x2) / 2) / (x2 - x1), (v - (y1 + y2) / 2) / (y2 - y1)) > 0.5 + margin)


# --- rendering ----------------------------------------------------------------------


def _band(dist: np.ndarray, half: float, edge: float) -> np.ndarray:
    """Soft band ``|dist| < half`` with ``edge``-wide shoulders."""
    return sigmoid((half - np.abs(dist)) / edge)


def _ribs(a: Anatomy, u, v, lat_d, edge: float) -> np.ndarray:
    """Posterior ribs (bright arcs leaving the spine, rising, then curving down along the
    chest wall) and fainter anterior ribs (sloping down medially), both sides at once."""
    d = np.abs(u - 0.5)
    within = sigmoid((lat_d + 0.03 - d) / 0.01) * sigmoid((d - 0.035) / 0.006)
    # Posterior: all ribs share one arc shape, so one periodic "phase" draws them all.
    w = v - a.rib_v0 - (-0.42 * d + 2.0 * d * d)
    k = w / a.rib_sp
    frac = (k - np.floor(k)) * a.rib_sp
    th = (0.019 + 0.012 * d) * (1 + 0.12 * np.sin(2.3 * np.floor(k)))  # ribs widen laterally, and differ
    p = frac / th
    inside = sigmoid((1 - p) * th / edge) * sigmoid(p * th / edge)
    cortex = np.exp(-((p / 0.14) ** 2)) + np.exp(-(((1 - p) / 0.12) ** 2))
    post = (0.035 * inside + 0.022 * cortex * (p < 1.3)) * ((k >= 0) & (k < 10.5))
    # Anterior ribs: thinner, fainter, visible from the chest wall to the costal cartilage.
    wa = v - 0.11 - 0.5 * (a.thorax - d)
    ka = wa / 0.068
    pa = (ka - np.floor(ka)) * 0.068 / 0.02
    ant = 0.025 * sigmoid((1 - pa) * 0.02 / edge) * sigmoid(pa * 0.02 / edge)
    ant = ant * ((ka >= 0) & (ka < 6)) * sigmoid((d - 0.13) / 0.015)
    # Below the domes the ribs are seen through the liver and stomach: much fainter.
    below = sigmoid((v - a.dome_v - 0.06) / 0.02)
    return (post + ant) * within * (1 - 0.6 * below)


def _clavicles(a: Anatomy, u, v, edge: float) -> np.ndarray:
    d = np.abs(u - 0.5)
    s = np.clip((d - 0.035) / 0.28, 0, 1)
    vc = a.apex_v + 0.045 - 0.06 * s + 0.012 * np.sin(math.pi * s)
    on = sigmoid((d - 0.035) / 0.006) * sigmoid((0.32 - d) / 0.01)
    dist = v - vc
    cortex = np.exp(-(((np.abs(dist) - 0.0115) / 0.003) ** 2))
    return (0.10 * _band(dist, 0.0125, edge) + 0.05 * cortex) * on


def _spine(a: Anatomy, u, v, edge: float) -> np.ndarray:
    du = u - 0.5
    body = _band(du, 0.042, 0.004)
    period = 0.042 + 0.01 * v  # vertebrae grow caudally
    phase = np.cos(2 * math.pi * v / period)
    discs = 1 - 0.35 * sigmoid((phase - 0.85) * 30)  # dark disc spaces
    pedicles = np.exp(-(((np.abs(du) - 0.03) / 0.007) ** 2)) * sigmoid((phase + 0.2) * 8)
    # Faint: on a well-exposed PA film the spine is only just seen through the heart.
    return 0.035 * body * discs + 0.015 * pedicles


def _mediastinum(a: Anatomy, u, v) -> np.ndarray:
    """Soft mask of the mediastinum above the heart: trachea, great vessels, aortic knob
    (bulging into the image-right lung)."""
    du = u - 0.5
    knob = 0.035 * np.exp(-(((v - (a.apex_v + 0.17)) / 0.035) ** 2))
    # Below the hila the mediastinum widens into the heart (pulmonary trunk, atria).
    widen = 0.045 * np.clip((v - 0.34) / 0.14, 0, 1)
    half = np.where(du > 0, a.med_half + knob + widen, a.med_half + 0.6 * widen)
    return sigmoid((half - np.abs(du)) / 0.005)


def _vessels(a: Anatomy, pose: Pose, n: int) -> np.ndarray:
    """Pulmonary vascular markings: two branching trees from the hila, thinning and
    fading towards the periphery; ``[n, n]`` in 0..1 before masking by the lungs."""
    rng = np.random.default_rng(a.vessel_seed)
    canvas = Image.new("L", (n, n), 0)
    draw = ImageDraw.Draw(canvas)
    scale = n / 512.0

    def branch(u, v, ang, length, level):
        if level > 5:
            return
        mid_ang = ang + rng.normal(0, 0.15)
        u2, v2 = u + length * math.cos(mid_ang), v + length * math.sin(mid_ang)
        p1, p2 = pose.to_image(u, v), pose.to_image(u2, v2)
        width = max(1, int(round((7.0 * 0.66**level) * scale)))
        fill = int(255 * 0.82**level)
        draw.line([(p1[0] * n, p1[1] * n), (p2[0] * n, p2[1] * n)], fill=fill, width=width)
        for sgn in (-1, 1):
            branch(u2, v2, mid_ang + sgn * rng.uniform(0.25, 0.6), length * rng.uniform(0.62, 0.82), level + 1)

    for side in (-1, 1):
        hu, hv = 0.5 + side * 0.095, 0.40 - (0.02 if side > 0 else 0.0)
        for ang in (-75, -45, -15, 15, 45, 75):  # degrees from lateral; negative = up
            a_rad = math.radians(ang + rng.normal(0, 8))
            direction = math.atan2(math.sin(a_rad), side * math.cos(a_rad))
            branch(hu, hv, direction, rng.uniform(0.06, 0.085), 0)
    out = np.asarray(canvas, dtype=np.float32) / 255.0
    return box_blur(out, max(1, int(round(1.5 * scale))), passes=2)


def heart_shadow(n: int, heart_box_px) -> np.ndarray:
    """The heart's silhouette on an ``n x n`` grid, float32 ``[n, n]`` in 0..1 (0.5 on its
    edge): an ellipse tilted 22 degrees whose bounding box is ``heart_box_px`` (xyxy in
    this grid's pixels).  :func:`render_anatomy` draws it; the Cardiomegaly mask is it."""
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    return rotated_ellipse(xx, yy, heart_box_px, 22.0, 5.0 * n / 1024)


def render_anatomy(
    a: Anatomy, pose: Pose, n: int, heart_box_px, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The normal chest on an ``n x n`` grid.

    ``heart_box_px``: xyxy of the heart shadow in this grid's pixels (the normal heart,
    or a Cardiomegaly box).  Returns ``(tissue, air, vessels)``, each float32 ``[n, n]``:
    ``tissue`` brightness of soft tissue and bone; ``air`` 0..1 fraction of lung air seen
    through (lungs minus mediastinum and heart); ``vessels`` brightness of vascular
    markings, already restricted to the lungs.
    """
    u, v = pose.canonical_grid(n)
    edge = 1.5 / n
    d = np.abs(u - 0.5)
    # Body: soft tissue thicker centrally; neck widening into the shoulders at the top.
    # Neck, then the shoulders sloping out past the image edge, then the chest wall.
    shoulders = 0.09 + 0.55 * np.clip((v - 0.01) / 0.13, 0, 1) ** 1.5
    half = np.minimum(shoulders, a.body_half * (0.93 + 0.07 * np.clip(v / 0.6, 0, 1)))
    half = np.maximum(half, shoulders * sigmoid((0.16 - v) / 0.03))  # shoulders above the axillae
    r = np.clip(1 - (d / half) ** 2, 0, 1)
    tissue = 0.36 * r**0.45 + 0.26 * r
    # The arms, beside the chest and separated from it by the darker axillae.
    arm = _band(d - a.body_half - 0.075, 0.045, 0.012) * sigmoid((0.55 - v) / 0.08) * sigmoid((v - 0.08) / 0.03)
    tissue = np.maximum(tissue, 0.3 * arm)
    if a.female:  # breast shadows over the lower lateral lung zones
        for side in (-1, 1):
            bd = np.hypot((u - 0.5 - side * 0.23) / 0.2, (v - (a.dome_v - 0.02)) / 0.14)
            tissue = tissue + 0.07 * sigmoid((1 - bd) / 0.03) * np.clip(1.2 - bd, 0, 1)
    for side in (-1, 1):  # humeral heads at the top corners
        hd = np.hypot(u - 0.5 - side * (a.body_half + 0.01), v - (a.apex_v + 0.01)) / 0.065
        tissue = tissue + 0.08 * np.sqrt(np.clip(1 - hd * hd, 0, 1))
    lat_d = lung_edges(a, v, 1, pose.inspiration)[0]
    tissue = tissue + _ribs(a, u, v, lat_d, edge) + _clavicles(a, u, v, edge) + _spine(a, u, v, edge)

    lungs = lung_mask(a, u, v, -1, inspiration=pose.inspiration, edge=edge)
    lungs = lungs + lung_mask(a, u, v, 1, inspiration=pose.inspiration, edge=edge)
    heart = heart_shadow(n, heart_box_px)
    air = lungs * (1 - _mediastinum(a, u, v)) * (1 - 0.88 * heart)
    # Lungs look darker in the middle zones than at the apices and bases (less tissue).
    air = air * (0.88 + 0.12 * np.exp(-(((v - 0.38) / 0.2) ** 2)))
    air = air * (1 + 0.04 * smooth_noise(rng, n, n, 24))  # parenchymal texture
    # Trachea and main bronchi: an air column over the upper mediastinum.
    trachea = _band(u - 0.5 - 0.01 * (v - 0.2), 0.016, 0.004) * sigmoid((a.apex_v + 0.24 - v) / 0.01)
    tissue = tissue - 0.12 * trachea * sigmoid(v / 0.02)
    if a.gastric_bubble:
        gd = np.hypot((u - 0.5 - 0.16) / 0.055, (v - a.dome_v - a.dome_left_extra - pose.inspiration - 0.07) / 0.03)
        tissue = tissue - 0.12 * sigmoid((1 - gd) * 12)
    hila = sum(np.exp(-((u - 0.5 - s * 0.1) ** 2 + (v - 0.41) ** 2) / 0.0012) for s in (-1, 1))
    vessels = (0.09 * _vessels(a, pose, n) + 0.07 * hila) * np.clip(lungs, 0, 1) * (1 - 0.7 * heart)
    return tissue.astype(np.float32), air.astype(np.float32), vessels.astype(np.float32)
