"""examples.png: finding labels that read at normal zoom on any film size, on bright and dark film."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("matplotlib")


def _label_box_height(png, rgb) -> int:
    from PIL import Image

    a = np.asarray(Image.open(png).convert("RGB")).astype(int)
    mask = np.abs(a - np.array(rgb)).sum(-1) < 40
    rows = np.flatnonzero(mask.sum(1) > 30)  # rows crossing the filled label box (not the 2 px box outline)
    runs = np.split(rows, np.flatnonzero(np.diff(rows) > 1) + 1)
    return max(len(r) for r in runs)


@pytest.mark.parametrize("film_px, brightness", [(1024, 0.0), (1024, 1.0), (256, 0.5)])
def test_prediction_labels_are_a_fixed_share_of_the_panel(tmp_path, film_px, brightness):
    from cxr.training.plots import plot_examples

    s = film_px / 1024
    film = np.full((film_px, film_px), brightness, np.float32)
    pred = {"boxes": np.array([[300 * s, 400 * s, 700 * s, 800 * s]]), "scores": np.array([0.9]), "labels": np.array([1])}
    gt = {"boxes": np.zeros((0, 4)), "labels": np.zeros(0, np.int64)}
    png = plot_examples([film], [pred], [gt], ["Mass"], tmp_path / "ex.png")
    orange_over_film = np.array([255, 165, 0]) * 0.9 + 255 * brightness * 0.1  # alpha 0.9 over the film
    h = _label_box_height(png, orange_over_film)
    panel_px = 500  # one film: a 5 inch panel at 100 dpi
    assert h >= panel_px / 25, h  # 7 pt text (the old size) makes a ~13 px box: ~10 px text
    assert h <= panel_px / 10, h


def test_examples_show_every_finding_class_of_the_split_first():
    from types import SimpleNamespace

    from cxr.training.evaluate import example_indices

    labels = [("Mass",), ("Mass", "Infiltration"), ("Mass",), (), ("Effusion",), ("Effusion",), (), ("Nodule",),
              ("Effusion",), ("Pneumothorax",), ("Cardiomegaly",), ("Atelectasis",), ("Pneumonia",)]
    studies = [SimpleNamespace(box_labels=lab) for lab in labels]
    shown = example_indices(studies)
    assert len(shown) == 8 and shown == sorted(shown)
    classes = {c for i in shown for c in labels[i]}
    assert {"Nodule", "Mass", "Pneumothorax", "Infiltration"} <= classes  # the first 8 films lack the last two
    assert any(not labels[i] for i in shown)  # a normal film too
    assert example_indices(studies[:3]) == [0, 1, 2]
