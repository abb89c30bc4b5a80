"""OHIF as a radiologist uses it, for the browser tests: the viewer (``cxr viewer serve``'s
:class:`ViewerServer`) and a Chromium page as fixtures, and what a reader does and sees on it --
open a study, track an SR's measurements, load a SEG or a map -- read back in screenshot pixels.

Imported as ``ohif_page`` (pytest puts ``tests/`` on ``sys.path``), like ``browser`` and ``peers``;
the fixtures ``viewer`` and ``page`` (one viewer and one browser page per test module) are in
tests/conftest.py.
"""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from browser import Browser


def need_viewer() -> Path:
    """The prepared OHIF build and Orthanc's plugins: skip naming the set-up, fail under CI=true."""
    from peers import need

    from cxr.client.viewer import ohif
    from cxr.errors import MissingFileError

    need("Orthanc")
    try:
        return ohif.prepared()
    except MissingFileError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{exc} (under CI=true the browser test must not skip; `make test` runs `cxr viewer fetch`)",
                        pytrace=False)
        pytest.skip(str(exc))


def store(viewer, folder: Path, *objects) -> None:
    for i, obj in enumerate(objects):
        if isinstance(obj, Path):
            viewer.store(obj)
            continue
        path = folder / f"object{i}.dcm"
        obj.save_as(path, enforce_file_format=True)
        viewer.store(path)


VIEWPORT = ("window.services.cornerstoneViewportService.getCornerstoneViewport("
            "window.services.viewportGridService.getActiveViewportId())")
# The active viewport shows an image (OHIF's own timing, "studyToFirstImage", is logged when it does).
SHOWN = f"(() => {{ const vp = {VIEWPORT}; return !!(vp && vp.getImageData && vp.getImageData()); }})()"


def open_study(page: Browser, url: str, listed: str) -> None:
    """Open ``url``, wait until the study browser lists ``listed`` (a series description or a modality) and
    the film is on screen: a reader acts on a page that has settled, and OHIF 3.13.2 logs errors when a
    viewport is replaced while it still renders."""
    page.goto(url)
    page.wait(f"document.body && document.body.innerText.includes({listed!r})", timeout=90)
    if page.eval("document.body.innerText.includes('for investigational use only')"):
        page.click_text("Confirm and hide")  # OHIF's first-visit notice covers the bottom of the viewport
    page.wait(SHOWN, timeout=90)
    settle(page)


def findings(sr: pydicom.Dataset) -> list[tuple[str, float, list[float]]]:
    """(finding name, score 0..1, box polyline) of each measurement group, read back from the SR's own content."""
    out = []
    measurements = next(i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "126010")
    for group in measurements.ContentSequence:
        items = group.ContentSequence
        name = next(i.ConceptCodeSequence[0].CodeMeaning for i in items if i.ConceptNameCodeSequence[0].CodeValue == "121071")
        score = next(float(i.MeasuredValueSequence[0].NumericValue) / 100 for i in items if i.ValueType == "NUM")
        box = next([float(v) for v in i.GraphicData] for i in items if i.ValueType == "SCOORD")
        out.append((name, score, box))
    return out


def on_screen(page: Browser, film_points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Film pixel coordinates (continuous frame: pixel i spans [i, i+1)) in screenshot pixels, through the
    active viewport's own image geometry (its index space has pixel centres at integers: half a pixel off)."""
    index = [(x - 0.5, y - 0.5) for x, y in film_points]
    return page.eval(f"""(() => {{
        const id = window.services.viewportGridService.getActiveViewportId();
        const vp = window.services.cornerstoneViewportService.getCornerstoneViewport(id);
        const image = vp.getImageData().imageData, rect = vp.canvas.getBoundingClientRect();
        return {json.dumps(index)}.map(([x, y]) => {{
            const [cx, cy] = vp.worldToCanvas(image.indexToWorld([x, y, 0]));
            return [rect.left + cx, rect.top + cy]; }}); }})()""")


def edge_points(page: Browser, polyline: list[float]) -> list[tuple[str, list[tuple[float, float]]]]:
    """Points along each edge of the SR's box polyline, in screenshot pixels."""
    screen = on_screen(page, [(polyline[i], polyline[i + 1]) for i in range(0, 8, 2)])
    edges = []
    for name, (a, b) in zip(("top", "right", "bottom", "left"), zip(screen, screen[1:] + screen[:1])):
        edges.append((name, [(a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1])) for t in np.linspace(0.15, 0.85, 15)]))
    return edges


def centre(box: tuple[float, float, float, float]) -> tuple[float, float]:
    return ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)


def colour_at(png: bytes, point: tuple[float, float], reach: int = 2) -> tuple[float, float, float]:
    """Mean RGB around ``point`` of the screenshot."""
    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(float)
    x, y = int(round(point[0])), int(round(point[1]))
    return tuple(rgb[y - reach:y + reach + 1, x - reach:x + reach + 1].reshape(-1, 3).mean(axis=0))


def is_grey(colour: tuple[float, float, float]) -> bool:
    """The film's own pixels: R = G = B (a coloured overlay pulls them apart; OHIF's panels are navy)."""
    r, g, b = colour
    return max(abs(r - g), abs(g - b), abs(r - b)) < 12


def overlay_share(png: bytes, points: list[tuple[float, float]], *, reach: int = 3) -> float:
    """Share of ``points`` with an overlay-yellow pixel within ``reach`` px (the film is grey: R = G = B)."""
    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    hits = 0
    for x, y in points:
        x0, y0 = int(round(x)), int(round(y))
        patch = rgb[max(y0 - reach, 0):y0 + reach + 1, max(x0 - reach, 0):x0 + reach + 1]
        yellow = (patch[..., 0] > 170) & (patch[..., 1] > 170) & (patch[..., 2] < 110)
        hits += bool(yellow.any())
    return hits / len(points)


def keep(png: bytes, name: str) -> None:
    folder = os.environ.get("CXR_VIEWER_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / name).write_bytes(png)


def track(page: Browser, sr: pydicom.Dataset, count: int) -> None:
    """What a radiologist does with the SR: double-click it in the study browser, answer "Yes" to
    tracking its measurements, open the measurements panel."""
    page.wait("!!document.querySelector('[data-cy=series-description-label]')")
    assert page.click_text(sr.SeriesDescription, selector="[data-cy=series-description-label]", double=True)
    page.wait("document.body.innerText.includes('continue tracking measurements')", timeout=60)
    assert page.click_text("Yes")
    page.wait(f"window.services.measurementService.getMeasurements().length === {count}", timeout=60)
    page.wait(SHOWN, timeout=60)
    settle(page)
    panel = page.eval("window.services.panelService.getPanels('right').map(p => p.id)"
                      ".find(i => /trackedMeasurements/.test(i))")
    page.eval(f"window.services.panelService.activatePanel({panel!r}, true)")


def track_findings(page: Browser, sr: pydicom.Dataset, shown: list) -> bytes:
    """Track the SR's measurements (:func:`track`), wait until the panel lists each of ``shown`` (:func:`findings`)
    by name with its score, and return the screenshot of what is then drawn."""
    track(page, sr, len(shown))
    for name, score, _ in shown:
        page.wait(f"document.body.innerText.includes({name!r}) && document.body.innerText.includes({f'{score:.2f}'!r})")
    settle(page)
    return page.screenshot()


def assert_boxes_drawn(page: Browser, png: bytes, shown: list) -> None:
    """Overlay colour along every edge of every box of ``shown`` on the screenshot ``png``."""
    for name, _, box in shown:
        for edge, points in edge_points(page, box):
            assert overlay_share(png, points) >= 0.8, f"{name}: no overlay along its {edge} edge"


def settle(page: Browser, seconds: float = 1.0) -> None:
    """Let what was just shown render before a screenshot."""
    page.eval(f"new Promise(r => setTimeout(r, {int(seconds * 1000)}))")


def load(page: Browser, description: str, ready: str) -> None:
    """Double-click a series in the study browser, accept OHIF's offer to load it, wait for ``ready``."""
    assert page.click_text(description, selector="[data-cy=series-description-label]", double=True)
    page.wait(f"({ready}) || !!document.evaluate(\"//button[normalize-space()='Yes']\", document, null, 9, null)"
              ".singleNodeValue", timeout=60)
    page.click_text("Yes")
    page.wait(ready, timeout=60)
    settle(page, 1.5)


def coloured(page: Browser, point: tuple[float, float], failure: str, timeout: float = 20.0) -> bytes:
    """Screenshots until the film's ``point`` is not the film's grey; the screenshot, or AssertionError.

    OHIF 3.13.2 sometimes leaves a just-fused map undrawn until the viewport renders again (seen in
    about half the runs on 2 cores; any interaction with the viewport draws it): after 5 s the test asks
    the viewport to render, as that interaction would (client/README.md, "Viewer")."""
    start = time.monotonic()
    while True:
        png = page.screenshot()
        (middle,) = on_screen(page, [point])
        if not is_grey(colour_at(png, middle)):
            return png
        waited = time.monotonic() - start
        if waited > timeout:
            keep(png, "failed.png")
            raise AssertionError(f"{failure}: {colour_at(png, middle)} after {timeout:.0f} s; "
                                 f"page problems: {page.problems()[-3:]}")
        if waited > 5:
            page.eval(f"(() => {{ const vp = {VIEWPORT}; vp && vp.render(); }})()")
        time.sleep(0.5)
