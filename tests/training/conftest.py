"""Fixtures shared by the training tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    """16 synthetic studies at 256 px (a quarter without findings), made once per test module."""
    from cxr.training.synth import SynthConfig, generate

    out = tmp_path_factory.mktemp("synth") / "data"
    generate(out, SynthConfig(images=16, seed=5, size=256, no_finding_fraction=0.25), progress=False)
    return out
