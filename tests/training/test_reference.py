"""Where an evaluation lies against a preset's recorded spread (training/reference.py)."""

from __future__ import annotations

import logging

import pytest

from cxr.errors import InvalidOptionError
from cxr.machine import cpu_kind
from cxr.training import reference
from cxr.training.reference import HELDOUT, ReferenceRun, spread, where_it_lies

AMX = {"simd": ["avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile"], "avx512": True, "vnni": True, "amx": True}
EPYC = {"simd": ["avx2", "avx512f", "avx512_vnni", "avx512_bf16"], "avx512": True, "vnni": True, "amx": False}
ICELAKE = {"simd": ["avx2", "avx512f", "avx512_vnni"], "avx512": True, "vnni": True, "amx": False}


def _run(seed: int, map50: float, kind: str = "amx") -> ReferenceRun:
    return ReferenceRun(seed=seed, cpu_kind=kind, isa="", precision="bf16", map50=map50, map50_ci=(map50 - 0.04, map50 + 0.04),
                        nodule=0.7, mass=0.7, pneumothorax=0.7, duplicate_rate=0.0, recall=0.9, int8="placed", images_per_s=10.0)


def _metrics(map50: float, **over) -> dict:
    return {"n_images": HELDOUT.images, "n_gt": HELDOUT.n_gt, "split": "all", "map50": map50, **over}


def _main(argv: list[str]) -> int:
    """cxr.cli.main, leaving the log levels it sets for the process as found."""
    from cxr.cli import main

    levels = {name: logging.getLogger(name).level for name in ("", "cxr", "highdicom")}
    try:
        return main(argv)
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


@pytest.fixture
def runs(monkeypatch):
    monkeypatch.setitem(reference.REFERENCE, "cpu-demo", (_run(1, 0.76), _run(2, 0.78), _run(3, 0.80)))


def test_cpu_kinds_of_the_projects_machines():
    assert [cpu_kind(c) for c in (AMX, EPYC, ICELAKE, {"simd": ["avx2"]}, {})] == [
        "amx", "avx512-bf16", "avx512-vnni", "avx2", "other"]


def test_spread_is_mean_and_sample_sd():
    s = spread([0.76, 0.78, 0.80])
    assert (s["n"], s["min"], s["max"]) == (3, 0.76, 0.80)
    assert s["mean"] == pytest.approx(0.78) and s["sd"] == pytest.approx(0.02)
    assert spread([0.5])["sd"] == 0.0


def test_inside_the_range(runs):
    text = where_it_lies(_metrics(0.77), "cpu-demo", AMX)
    assert "0.780 +- 0.020" in text and "3 training seeds in bf16 on amx" in text
    assert "0.770: inside the reference range" in text


def test_far_below_is_named(runs):
    text = where_it_lies(_metrics(0.55), "cpu-demo", AMX)
    assert "BELOW the reference (-0.230 from the mean): not the recipe's usual result" in text
    assert "ABOVE the reference (+0.120 from the mean)" in where_it_lies(_metrics(0.90), "cpu-demo", AMX)


def test_just_outside_the_seeds_is_within_three_sd(runs):
    assert "above the range of the reference seeds (+0.040 from their mean) but within 3 sd" in where_it_lies(
        _metrics(0.82), "cpu-demo", AMX)


def test_another_kind_of_cpu_is_said(runs):
    text = where_it_lies(_metrics(0.77), "cpu-demo", ICELAKE)
    assert "NOT on this kind of CPU; on amx" in text and "This CPU: avx512-vnni" in text
    assert "--precision auto trains in fp32 here" in text


def test_another_held_out_set_is_not_compared(runs):
    text = where_it_lies(_metrics(0.9, n_images=59, n_gt=51, split="test"), "cpu-demo", AMX)
    assert text.startswith("Not compared") and HELDOUT.command in text


def test_unknown_preset_is_refused():
    with pytest.raises(InvalidOptionError, match="no reference runs for preset 'r99'"):
        where_it_lies(_metrics(0.5), "r99", AMX)


def test_evaluate_refuses_an_unknown_reference_before_evaluating(tmp_path, capsys):
    code = _main(["evaluate", "--checkpoint", str(tmp_path / "missing.pt"), "--data", str(tmp_path), "--out", str(tmp_path / "e"),
                  "--reference", "r99"])
    assert code == 2 and "no reference runs for preset 'r99'" in capsys.readouterr().err


def test_evaluate_says_why_another_set_is_not_compared(checkpoint, synth_data, tmp_path, capsys):
    assert _main(["evaluate", "--checkpoint", str(checkpoint), "--data", str(synth_data), "--split", "test",
                 "--out", str(tmp_path / "eval"), "--bootstrap", "0", "--reference", "cpu-demo"]) == 0
    out = capsys.readouterr().out
    assert "Not compared with the cpu-demo reference" in out or "No reference runs are recorded" in out
