"""Saliency overlays a radiologist can read: one PNG per study, one panel per finding.

Each panel is the whole film with that finding's D-RISE map laid over it (colour where
the finding depends on the film more than on its median region, the film itself elsewhere),
the finding's box and label, and a colour bar with the map's own values.  One panel per finding, never one blob for
all: a map explains one detection, and a small nodule's map next to a large effusion's must
not be drowned by it.  Used by ``cxr predict --saliency DIR``; the maps come on the film's
own pixel grid from :meth:`~cxr.client.results.ExplainedResult.saliency_map`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxr.client.results import ExplainedResult
from cxr.client.study import Study

PANEL_MAX = 768  # px on a panel's long side: a 3000 px film is read at screen size, a 256 px one is enlarged
COLUMNS = 3  # panels per row
MAX_PANELS = 9  # the highest-scoring findings; a weak model's 40 look-alike boxes are not read one by one
# Inferno (perceptually uniform, readable by colour-blind readers), sampled at 9 points.
INFERNO = np.array([(0, 0, 4), (33, 12, 74), (87, 16, 110), (138, 34, 106), (188, 55, 84), (228, 90, 49),
                    (249, 142, 9), (249, 203, 53), (252, 255, 164)], np.float32)
MAX_ALPHA = 0.7  # the hottest pixel still lets the film show through


def colormap(t: np.ndarray) -> np.ndarray:
    """``t`` in ``[0, 1]`` (any shape) -> RGB float32 ``[..., 3]`` in 0..255."""
    x = np.clip(t, 0.0, 1.0) * (len(INFERNO) - 1)
    stops = np.arange(len(INFERNO))
    return np.stack([np.interp(x, stops, INFERNO[:, c]) for c in range(3)], axis=-1).astype(np.float32)


def _panel_film(pixels: np.ndarray) -> tuple[np.ndarray, float]:
    """The film ``[H, W]`` in [0, 1] scaled to fit :data:`PANEL_MAX`, as RGB float, and the scale used."""
    from PIL import Image

    h, w = pixels.shape
    scale = PANEL_MAX / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    img = Image.fromarray(np.ascontiguousarray(pixels, np.float32), mode="F").resize(size, Image.Resampling.BILINEAR)
    grey = np.asarray(img, np.float32).clip(0, 1) * 255.0
    return np.repeat(grey[..., None], 3, axis=-1), scale


def _heat(film: np.ndarray, saliency: np.ndarray) -> tuple[np.ndarray, float, float]:
    """The film with ``saliency`` (same grid as the original film) laid over it; the colour scale's (low, high).

    Colour starts at the map's median: a D-RISE map sits on a baseline (the similarity a
    random mask leaves, everywhere), and what explains the finding is where it rises
    above it; below the median the film shows as it is.
    """
    from PIL import Image

    low, high = float(np.median(saliency)), float(saliency.max())
    t = (saliency - low) / (high - low) if high > low else np.zeros_like(saliency)
    t = np.asarray(Image.fromarray(t.astype(np.float32), mode="F").resize(film.shape[1::-1], Image.Resampling.BILINEAR))
    alpha = (MAX_ALPHA * t)[..., None]
    return film * (1 - alpha) + colormap(t) * alpha, low, high


def _colour_bar(height: int, low: float, high: float, font) -> np.ndarray:
    """A vertical bar ``[height, width, 3]``: the colour scale with its two ends' values and what they mean."""
    from PIL import Image, ImageDraw

    width = max(60, font.size * 4)
    bar = Image.new("RGB", (width, height), "white")
    ramp = colormap(np.linspace(1, 0, height - 2 * font.size - 8))[:, None, :].repeat(font.size, axis=1)
    bar.paste(Image.fromarray(ramp.astype(np.uint8)), (4, font.size + 4))
    draw = ImageDraw.Draw(bar)
    draw.text((2, 0), f"{high:.3g}", fill="black", font=font)
    draw.text((2, height - font.size - 2), f"{low:.3g}", fill="black", font=font)  # the median: no colour below it
    return np.asarray(bar, np.float32)


def _panel(film: np.ndarray, scale: float, result: ExplainedResult, index: int, colour: str, font) -> np.ndarray:
    from PIL import Image, ImageDraw

    from cxr.client.predict import draw_label

    shaded, low, high = _heat(film, result.saliency_map(index))
    d = result.detections[index]
    img = Image.fromarray(shaded.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    box = [v * scale for v in d.box_xyxy_px]
    draw.rectangle(box, outline=colour, width=max(2, round(max(img.size) / 300)))
    draw_label(draw, (box[0], box[1]), f"{index + 1}. {d.label} {d.score:.2f}", colour, font, image_width=img.width)
    return np.concatenate([np.asarray(img, np.float32), _colour_bar(img.height, low, high, font)], axis=1)


def saliency_overlay(study: Study | Path, result: ExplainedResult, out: Path, *, min_score: float = 0.0) -> Path:
    """One PNG for ``result``'s study: a panel per finding at or above ``min_score`` (a film with a
    caption when there is none), a caption line naming the method and its settings."""
    from PIL import Image, ImageDraw

    from cxr.client.predict import COLOURS, label_font

    pixels = (study if isinstance(study, Study) else Study.read(study)).decoded().pixels
    film, scale = _panel_film(pixels)
    font = label_font(film.shape[0])
    shown = [i for i, d in enumerate(result.detections) if d.score >= min_score]  # detections come best first
    panels = [_panel(film, scale, result, i, COLOURS[k % len(COLOURS)], font) for k, i in enumerate(shown[:MAX_PANELS])]
    caption = (f"{result.method} saliency ({result.masks} masks, {result.grid}x{result.grid} grid, seed {result.seed}): "
               "colour where the finding depends on the film more than on its median region; the bar gives "
               "E[similarity | region kept] from the map's median to its maximum")
    if len(shown) > MAX_PANELS:
        caption += f"; the {MAX_PANELS} highest-scoring of {len(shown)} findings"
    if not panels:
        panels = [film]
        caption = f"no finding at or above {min_score:.2f}: nothing to explain"
    height, width = max(p.shape[0] for p in panels), max(p.shape[1] for p in panels)
    rows = [panels[i : i + COLUMNS] for i in range(0, len(panels), COLUMNS)]
    sheet_width = width * min(COLUMNS, len(panels))
    lines = _wrap(caption, font, sheet_width - 8)
    strip = len(lines) * (font.size + 4) + 8
    sheet = np.full((strip + height * len(rows), sheet_width, 3), 255, np.float32)
    for r, row in enumerate(rows):
        for c, panel in enumerate(row):
            sheet[strip + r * height : strip + r * height + panel.shape[0], c * width : c * width + panel.shape[1]] = panel
    img = Image.fromarray(sheet.astype(np.uint8))
    ImageDraw.Draw(img).text((4, 4), "\n".join(lines), fill="black", font=font, spacing=4)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)
    return out


def _wrap(text: str, font, width: float) -> list[str]:
    """``text`` broken at spaces into lines no wider than ``width`` px in ``font``."""
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines
